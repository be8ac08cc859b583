"""Linear layers run through oneDNN with their weights reordered once, for inference on the CPU.

A float32 `nn.Linear` on the CPU calls MKL's sgemm, which reads the weight in its stored layout
on every call. oneDNN reorders the weight once into the blocked layout its kernels read fastest;
on this project's 2-core AMD EPYC machine that is 1.2-1.4x the matrix products per second at the
shapes of a 135M model (`bench/bench_lm_eval.py` shows the effect on scoring). The numbers differ
from MKL's only by the order of float32 additions (about 1e-5 on a choice's log-likelihood).

`packed_linears(model)` swaps the weights for the duration of a `with` block: each dense weight
is freed once its reordered copy exists and is restored from that copy, bit for bit, on the way
out, so packing costs no memory. There is no autograd through the packed product: use it under
`torch.no_grad()`, as scoring and generation do.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

# Rows the reordered layout is chosen for; any number of rows works.
_ROWS_HINT = 4096


def can_pack(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether `packed_linears` would change anything: a float32 model on a CPU with oneDNN,
    not wrapped by PEFT (its layers read their base layer's weight), outside CPU autocast (a
    bf16 training run validating: the activations would not be float32)."""
    return (
        device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and not any(type(m).__module__.startswith("peft.") for m in model.modules())  # the model itself too
        and next(model.parameters()).dtype == torch.float32
    )


def _packable(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """Plain linear layers whose weight no other parameter shares and is not packed already (by a
    block on a model that contains this one); the output layer is left out (scoring runs it on a
    few positions only, and it is often tied to the embeddings)."""
    output_layer = getattr(model, "get_output_embeddings", None)
    head = output_layer() if callable(output_layer) else None
    seen: dict[int, int] = {}
    for parameter in model.parameters():
        seen[parameter.data_ptr()] = seen.get(parameter.data_ptr(), 0) + 1
    return [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear and m is not head and seen[m.weight.data_ptr()] == 1 and m.weight.numel()
    ]


def _packed_forward(weight: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    return forward


@dataclass
class _Packing:
    """A model's packed layers and how many `with` blocks (of any thread) are using them."""

    users: int = 0
    layers: list[tuple[torch.nn.Linear, torch.Tensor]] = field(default_factory=list)


_LOCK = threading.Lock()
_PACKINGS: dict[int, _Packing] = {}  # by id(model), while packed


@contextmanager
def packed_linears(model: torch.nn.Module, device: torch.device | None = None) -> Iterator[int]:
    """Run the model's linear layers on oneDNN-reordered weights inside the block; yields how
    many layers are packed (0 where `can_pack` says no, and nothing changes).

    Blocks nest and may run in several threads on one model (two teachers sharing it): the
    first block in packs, the last one out restores."""
    device = device or next(model.parameters()).device
    if not can_pack(model, device):
        yield 0
        return
    with _LOCK:
        packing = _PACKINGS.setdefault(id(model), _Packing())
        if packing.users == 0:
            packing.layers = _pack(model)
        packing.users += 1
    try:
        yield len(packing.layers)
    finally:
        with _LOCK:
            packing.users -= 1
            if packing.users == 0:
                _restore(packing.layers)
                del _PACKINGS[id(model)]


def _pack(model: torch.nn.Module) -> list[tuple[torch.nn.Linear, torch.Tensor]]:
    packed: list[tuple[torch.nn.Linear, torch.Tensor]] = []
    try:
        for layer in _packable(model):
            reordered = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), _ROWS_HINT)
            layer.weight.data = torch.empty(0, dtype=layer.weight.dtype)
            packed.append((layer, reordered))
            bias = None if layer.bias is None else layer.bias.detach()
            layer.forward = _packed_forward(reordered, bias)  # type: ignore[method-assign]
    except BaseException:
        _restore(packed)
        raise
    return packed


def _restore(packed: list[tuple[torch.nn.Linear, torch.Tensor]]) -> None:
    for layer, reordered in packed:
        layer.weight.data = reordered.to_dense()
        del layer.forward  # back to the class's forward
