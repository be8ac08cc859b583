"""oneDNN-packed linear layers: the same outputs, no extra memory, the weights back bit for bit."""

from __future__ import annotations

import pytest
import torch

from tinystudent.models import load_model
from tinystudent.models.packed_linears import can_pack, packed_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_packed_layers_give_the_same_logits_free_their_dense_weights_and_restore_them(tiny_causal):
    model = load_model(str(tiny_causal), device="cpu").model
    before = _weights(model)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with packed_linears(model) as count:
            assert count == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers; not the output layer
            assert model.model.layers[0].mlp.up_proj.weight.numel() == 0  # the dense copy is freed
            assert model.get_output_embeddings().weight.numel() > 0  # tied to the embeddings, kept
            got = model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert model(input_ids=ids).logits.requires_grad  # the class's own forward again


def test_an_error_inside_the_block_still_restores_every_weight(tiny_causal):
    model = load_model(str(tiny_causal), device="cpu").model
    before = _weights(model)
    with pytest.raises(RuntimeError, match="inside"):
        with packed_linears(model):
            raise RuntimeError("inside")
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_models_it_would_not_help_are_left_alone(tiny_causal):
    from peft import LoraConfig, get_peft_model

    model = load_model(str(tiny_causal), device="cpu").model
    assert can_pack(model, torch.device("cpu")) and not can_pack(model, torch.device("cuda"))
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with packed_linears(lora) as count:
        assert count == 0
    half = load_model(str(tiny_causal), device="cpu", dtype="bfloat16").model
    with packed_linears(half) as count:
        assert count == 0
    plain = load_model(str(tiny_causal), device="cpu").model
    with torch.autocast("cpu", dtype=torch.bfloat16), packed_linears(plain) as count:
        assert count == 0  # a bf16 run validating: its activations are not float32


def test_blocks_nest_across_threads_and_the_last_one_out_restores(tiny_causal):
    """Two teachers may share one model in two threads: a block that ends while another is
    still running leaves the layers packed for it."""
    import threading

    model = load_model(str(tiny_causal), device="cpu").model
    before = _weights(model)
    inner_done = threading.Event()

    def inner() -> None:
        with packed_linears(model) as count:
            assert count == 14
        inner_done.set()

    with packed_linears(model) as outer:
        thread = threading.Thread(target=inner)
        thread.start()
        thread.join()
        assert inner_done.is_set() and outer == 14
        assert model.model.layers[0].mlp.up_proj.weight.numel() == 0  # still packed for this block
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
