"""Token-level distillation from a teacher's stored top-k log-probabilities (`stored_logits`).

The teacher's next-token distribution at each target row is kept as its k most likely tokens'
log-probabilities (at temperature 1) and the log of the mass left over, its tail. The student's
distribution is coarsened the same way, onto the same k + 1 outcomes: its log-probabilities of the
teacher's top-k tokens and the log of its own mass outside them. The divergence (forward KL,
reverse KL or JSD, `losses.token_divergence`) compares the two coarsened distributions, each
softened at the temperature as if its k + 1 log-probabilities were logits, so a student equal to
the teacher has zero loss at any temperature. With k = the vocabulary there is no tail and this is
exactly the live teacher's divergence (`tests/distill/test_stored_logits.py`); below it, the
tail's share is the one bucket's, a lower bound on what the spread-out tail would have at T > 1
(caching a teacher's top-k is biased towards its head: Anshumann et al. 2025, "Sparse Logit
Sampling: Accelerating Knowledge Distillation in LLMs").

The output layer runs a chunk of rows at a time as in `fused.fused_head_loss`: with a plain linear
head the gradient is worked out in forward and each chunk's logits dropped, otherwise each chunk
runs under activation checkpointing (`models.heads.in_chunks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from tinystudent.distill.fused import fused_linear_loss
from tinystudent.distill.losses import token_divergence
from tinystudent.models.heads import in_chunks, token_logprobs

# A tail with no mass (log 0) is stored as -inf; in the loss it is this, whose exp is exactly 0 in
# float32 at any temperature a run uses, and whose differences stay finite (no NaN gradient).
NO_MASS = -1e30


@dataclass
class SparseTeacher:
    """A teacher's stored top-k next-token log-probabilities at one token batch's target rows.

    Attributes:
        indices: [rows, k] token ids, most likely first.
        logprobs: [rows, k] their log-probabilities at temperature 1 (float32).
        tail: [rows] log of the probability of every other token (NO_MASS when none is left).
    """

    indices: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.indices.shape[-1])

    def to(self, device) -> SparseTeacher:
        return SparseTeacher(self.indices.to(device), self.logprobs.to(device), self.tail.to(device))


def sparse_divergence(
    student_logits: torch.Tensor,
    indices: torch.Tensor,
    logprobs: torch.Tensor,
    tail: torch.Tensor,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-row divergence between the student's logits and a teacher's top-k log-probabilities
    plus tail, both coarsened onto the teacher's top-k tokens and one tail bucket.

    Args:
        student_logits: [rows, vocabulary] (already cut to the compared vocabulary).
        indices, logprobs, tail: the teacher's top-k (`SparseTeacher`); k = the vocabulary drops
            the tail bucket, which is then the full-vocabulary divergence.
        divergence, temperature, beta: as `losses.token_divergence`.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    student = log_q.gather(-1, indices)
    teacher = logprobs.float()
    if indices.shape[-1] < student_logits.shape[-1]:
        student_tail = log_q.scatter(-1, indices, float("-inf")).logsumexp(-1, keepdim=True)
        student = torch.cat([student, student_tail.clamp(min=NO_MASS)], dim=-1)
        teacher = torch.cat([teacher, tail.float().clamp(min=NO_MASS)[:, None]], dim=-1)
    return token_divergence(student, teacher, divergence, temperature, beta)


def _sparse_row_losses(hidden, targets, indices, logprobs, tail, head, kd_vocab, divergence, temperature, beta):
    logits = head(hidden).float()
    vocab = kd_vocab or logits.shape[-1]
    kd = sparse_divergence(logits[:, :vocab], indices, logprobs, tail, divergence, temperature, beta)
    return token_logprobs(logits, targets), kd


def sparse_head_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    teacher: SparseTeacher,
    *,
    head: Callable[[torch.Tensor], torch.Tensor],
    linear: torch.nn.Linear | None,
    ce_scale: float,
    kd_scale: float,
    kd_vocab: int | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_tokens: int = 256,
):
    """`ce_scale * sum(-log p(target)) + kd_scale * sum(sparse divergence)` over the rows.

    Args:
        hidden: [rows, width] the student's rows at the target positions (`ModelKind.token_rows`).
        targets: [rows] next-token ids.
        teacher: the teacher's stored top-k at the same rows.
        head: the student's rows -> logits; `linear`: the same as a plain output layer, whose loss
            is then fused (its gradient computed in forward); None takes the checkpointed path.

    Returns:
        (loss, target log-probabilities per row, divergence per row), as `fused.fused_head_loss`
        (the last two detached) or, unfused, as `losses.chunked_token_losses` gives them.
    """
    if teacher.indices.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"the stored teacher logits hold {teacher.indices.shape[0]} target rows, the batch {hidden.shape[0]}"
        )
    if linear is not None and torch.is_grad_enabled():

        def chunk_kd(logits: torch.Tensor, piece: slice) -> torch.Tensor:
            vocab = kd_vocab or logits.shape[-1]
            return sparse_divergence(
                logits[:, :vocab],
                teacher.indices[piece],
                teacher.logprobs[piece],
                teacher.tail[piece],
                divergence,
                temperature,
                beta,
            )

        return fused_linear_loss(
            hidden, linear, targets, ce_scale=ce_scale, kd_scale=kd_scale, chunk_kd=chunk_kd, chunk_tokens=chunk_tokens
        )
    rows: list[torch.Tensor | None] = [hidden, targets, teacher.indices, teacher.logprobs, teacher.tail]
    logprobs, kd = in_chunks(_sparse_row_losses, rows, (head, kd_vocab, divergence, temperature, beta), chunk_tokens)
    return -ce_scale * logprobs.sum() + kd_scale * kd.sum(), logprobs, kd
