"""Output layer and token-level losses fused: gradients computed chunk by chunk in forward.

Cross-entropy and logit distillation only need the gradient of a weighted sum of per-token
terms, so it can be worked out while each chunk's logits exist, then the logits are dropped:
neither the [tokens, vocabulary] logits nor their recomputation in backward is ever needed
(the fused linear cross-entropy of Liger-Kernel, Hsu et al. 2024, extended to KD terms). Only
the gradients for the hidden states ([tokens, width]) and the output layer ([vocabulary, width])
are kept until backward. `losses.chunked_token_losses` is the general, per-token path this must
match; a test checks that it does.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from tinystudent.distill.losses import token_divergence

# Per chunk: (the student's logits for rows `piece`, which need their gradient; piece) -> the
# divergence per row. The teacher's side (its rows and output layer, or stored top-k) is the
# closure's, never a differentiable input.
ChunkKD = Callable[[torch.Tensor, slice], torch.Tensor]


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_kd, ce_scale, kd_scale, chunk_tokens):
        # A frozen output layer (LoRA) needs no [vocabulary, width] gradient: skip its matmul.
        want_weight = ctx.needs_input_grad[1]
        want_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        logprob_rows, kd_rows = [], []
        for start in range(0, hidden.shape[0], chunk_tokens):
            piece = slice(start, start + chunk_tokens)
            h = hidden[piece]
            with torch.enable_grad():
                logits = F.linear(h, weight, bias).float().detach().requires_grad_(True)
                logprobs = F.log_softmax(logits, dim=-1).gather(-1, targets[piece, None]).squeeze(-1)
                loss = -ce_scale * logprobs.sum()
                kd = chunk_kd(logits, piece) if chunk_kd is not None else None
                if kd is not None:
                    loss = loss + kd_scale * kd.sum()
                (grad_logits,) = torch.autograd.grad(loss, logits)
            total += loss.detach()
            logprob_rows.append(logprobs.detach())
            kd_rows.append(kd.detach() if kd is not None else torch.zeros_like(logprobs.detach()))
            grad_logits = grad_logits.to(weight.dtype)
            grad_hidden[piece] = (grad_logits @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h.to(weight.dtype)).float()
            if grad_bias is not None:
                grad_bias += grad_logits.float().sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        return total, torch.cat(logprob_rows), torch.cat(kd_rows)

    @staticmethod
    def backward(ctx, grad_total, _grad_logprobs, _grad_kd):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        out_hidden = grad_hidden * grad_total.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        out_weight = (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None
        out_bias = (grad_bias * grad_total).to(ctx.weight_dtype) if grad_bias is not None else None
        return (out_hidden, out_weight, out_bias) + (None,) * 5


def fused_linear_loss(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    *,
    ce_scale: float,
    kd_scale: float = 0.0,
    chunk_kd: ChunkKD | None = None,
    chunk_tokens: int = 256,
):
    """`ce_scale * sum(-log p(target)) + kd_scale * sum(chunk_kd)` over the rows of a plain output
    layer, with its gradient computed in forward, chunk by chunk: the one fused loop, whatever the
    teacher's side of the divergence is (`fused_head_loss`: a live teacher; `sparse_kd`: stored
    top-k).

    Returns:
        (loss, target log-probabilities per row, divergence per row; zeros without `chunk_kd`),
        the last two detached, for reporting.
    """
    return _FusedHeadLoss.apply(
        hidden, head.weight, head.bias, targets, chunk_kd, float(ce_scale), float(kd_scale), int(chunk_tokens)
    )


def fused_head_loss(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    *,
    ce_scale: float,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: torch.nn.Linear | Callable[[torch.Tensor], torch.Tensor] | None = None,
    kd_scale: float = 0.0,
    kd_vocab: int | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_tokens: int = 256,
):
    """`ce_scale * sum(-log p(target)) + kd_scale * sum(divergence)` over the rows, with its
    gradient computed in forward, chunk by chunk (`fused_linear_loss`).

    `teacher_head` is the teacher's plain output layer, or any function of its rows run under
    no_grad (several teachers' mixture, whose rows are theirs side by side).

    Returns:
        (loss, target log-probabilities per row, divergence per row); the last two detached,
        for reporting.
    """
    if teacher_hidden is not None and teacher_head is None:
        raise ValueError("teacher_hidden without teacher_head: the teacher's rows need its output layer")
    chunk_kd = None
    if teacher_hidden is not None and teacher_head is not None:
        rows_of_teacher, teacher = teacher_hidden, teacher_head

        def chunk_kd(logits: torch.Tensor, piece: slice) -> torch.Tensor:
            with torch.no_grad():
                teacher_logits = teacher(rows_of_teacher[piece]).float()
            vocab = kd_vocab or logits.shape[-1]
            return token_divergence(logits[:, :vocab], teacher_logits[:, :vocab], divergence, temperature, beta)

    return fused_linear_loss(
        hidden, head, targets, ce_scale=ce_scale, kd_scale=kd_scale, chunk_kd=chunk_kd, chunk_tokens=chunk_tokens
    )
