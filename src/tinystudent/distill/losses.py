"""Distillation losses: pure functions of tensors, checked against float64 references in tests.

Every divergence is computed in float32 (or higher) whatever the model's dtype, and terms where
a probability is exactly zero (padded choices) contribute zero rather than NaN.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from tinystudent.models.heads import in_chunks, token_logprobs

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _kl_from_logprobs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension; zero-probability entries of p contribute zero."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per row, scaled by T^2 (Hinton et al. 2015, "Distilling the
    knowledge in a neural network"): the student covers every mode of the teacher."""
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return _kl_from_logprobs(log_p, log_q) * t * t


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(student || teacher) per row, scaled by T^2 (MiniLLM, Gu et al. 2023): mode-seeking,
    the student concentrates on the teacher's main modes."""
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return _kl_from_logprobs(log_q, log_p) * t * t


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, beta: float = 0.5
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence per row, scaled by T^2 (GKD, Agarwal et al. 2024):
    `beta * KL(P || M) + (1 - beta) * KL(Q || M)` with `M = beta * P + (1 - beta) * Q`,
    P the teacher's and Q the student's distribution; beta = 0.5 is the symmetric JSD."""
    if not 0 < beta < 1:
        raise ValueError(f"the JSD's beta must lie strictly between 0 and 1, got {beta}")
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    return (beta * _kl_from_logprobs(log_p, log_m) + (1 - beta) * _kl_from_logprobs(log_q, log_m)) * t * t


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: str,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """One of `forward_kl`, `reverse_kl`, `jsd`, per row."""
    if divergence == "forward_kl":
        return forward_kl(student_logits, teacher_logits, temperature)
    if divergence == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, temperature)
    if divergence == "jsd":
        return generalized_jsd(student_logits, teacher_logits, temperature, beta)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")


def sorted_probabilities(logits: torch.Tensor, temperature: float, width: int) -> torch.Tensor:
    """Each row's softmax at `temperature`, sorted in descending order and padded with zeros to
    `width` entries: what ULD compares, since it ignores which token holds which probability."""
    probs = F.softmax(logits.float() / float(temperature), dim=-1).sort(dim=-1, descending=True).values
    return F.pad(probs, (0, width - probs.shape[-1]))


def uld_distance(student_logits: torch.Tensor, target_sorted: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation:
    the Universal Logit Distillation Loss for LLMs"), per row: the L1 distance between the
    student's sorted probability vector and the teacher's (`target_sorted`, from
    `sorted_probabilities`), the shorter vocabulary padded with zeros. This is the closed form of
    the Wasserstein-1 distance the paper derives with unit transport costs, and it needs no shared
    vocabulary: only the shapes of the two distributions are compared."""
    width = max(student_logits.shape[-1], target_sorted.shape[-1])
    student = sorted_probabilities(student_logits, temperature, width)
    return (student - F.pad(target_sorted, (0, width - target_sorted.shape[-1]))).abs().sum(-1)


def mean_sorted_target(
    teacher_logits: list[torch.Tensor], proportions: list[float], temperature: float
) -> torch.Tensor:
    """Several teachers' sorted probability vectors averaged with `proportions` (summing to 1):
    the target ULD compares the student with. Teachers of different tokenizers have no token-by-
    token average; their sorted vectors line up rank by rank, and one teacher is itself."""
    width = max(t.shape[-1] for t in teacher_logits)
    parts = [w * sorted_probabilities(t, temperature, width) for t, w in zip(teacher_logits, proportions)]
    return torch.stack(parts).sum(0)


def mixture_logits(teacher_logits: list[torch.Tensor], proportions: list[float], temperature: float) -> torch.Tensor:
    """Logits whose softmax at `temperature` is the teachers' mixture `sum_k w_k softmax(z_k / T)`
    (`proportions` w_k summing to 1): `T log sum_k w_k softmax(z_k / T)`, computed in log space.
    Every divergence of `token_divergence` then compares the student with the mixture; for
    forward KL the gradient equals that of `sum_k w_k KL(p_k || q)` (both are `q - sum_k w_k p_k`),
    so one mixture costs one divergence, not one per teacher."""
    t = float(temperature)
    logs = [F.log_softmax(z.float() / t, dim=-1) + math.log(w) for z, w in zip(teacher_logits, proportions) if w > 0]
    return t * torch.logsumexp(torch.stack(logs), dim=0)


def choice_kd_loss(
    student_scores: torch.Tensor, teacher_logprobs: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) between distributions over the answer choices, per question.

    Both inputs are [questions, choices] scores (summed log-likelihoods, or an encoder's
    logits); padded choices hold `PAD_SCORE` in both. A softmax at temperature T turns each row into a
    distribution (Hinton et al. 2015), so teachers and students need not share a tokenizer.
    """
    return forward_kl(student_scores, teacher_logprobs, temperature)


def mutual_kl(student_scores: torch.Tensor, peer_scores: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Deep mutual learning (Zhang et al. 2018): mean over peers of KL(peer || student) per
    question, the peers' distributions detached (each peer is a fixed target for this update)."""
    if not peer_scores:
        return torch.zeros(student_scores.shape[0], device=student_scores.device)
    terms = [forward_kl(student_scores, peer.detach(), temperature) for peer in peer_scores]
    return torch.stack(terms).mean(0)


def hidden_state_loss(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor]) -> torch.Tensor:
    """Patient KD (Sun et al. 2019): mean squared distance between L2-normalised hidden states
    of paired layers, averaged over rows and pairs. Each state is [rows, width]."""
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError("hidden-state matching needs the same, non-zero number of student and teacher layers")
    losses = []
    for s, t in zip(student_states, teacher_states):
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(
                f"hidden-state matching needs equal widths, student {s.shape[-1]} vs "
                f"teacher {t.shape[-1]}; pick a teacher of the same width"
            )
        diff = F.normalize(s.float(), dim=-1) - F.normalize(t.float(), dim=-1)
        losses.append(diff.pow(2).sum(-1).mean())
    return torch.stack(losses).mean()


def _row_losses(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    head: Callable,
    teacher_head: Callable | None,
    kd_vocab: int | None,
    divergence: str,
    temperature: float,
    beta: float,
):
    logits = head(hidden).float()
    target_logprobs = token_logprobs(logits, targets)
    if teacher_hidden is None:
        return target_logprobs, torch.zeros_like(target_logprobs)
    if teacher_head is None:
        raise TypeError("teacher_hidden needs the teacher's output layer (teacher_head)")
    with torch.no_grad():
        teacher_logits = teacher_head(teacher_hidden).float()
    vocab = kd_vocab or logits.shape[-1]
    kd = token_divergence(logits[:, :vocab], teacher_logits[:, :vocab], divergence, temperature, beta)
    return target_logprobs, kd


def chunked_token_losses(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Callable,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: Callable | None = None,
    kd_vocab: int | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_tokens: int | None = 256,
):
    """Log-probability of each target token and, with a teacher, its token-level divergence, the
    output layers run `chunk_tokens` rows at a time (`models.heads.in_chunks`: the logits exist for
    one chunk at a time, recomputed in backward). Without a teacher this is
    `models.heads.target_logprobs`, with zeros for the divergence.

    Args:
        hidden: [rows, width] final hidden states at the positions that predict `targets`.
        targets: [rows] next-token ids.
        head: hidden -> logits (the student's output layer).
        teacher_hidden, teacher_head: the teacher's hidden states at the same positions and its
            output layer; run under no_grad.
        kd_vocab: compare only the first `kd_vocab` logits (vocabulary alignment); None: all.
        chunk_tokens: rows per chunk; None computes everything at once (the reference).

    Returns:
        (target_logprobs [rows], divergence [rows], zeros without a teacher).
    """
    args = (head, teacher_head, kd_vocab, divergence, temperature, beta)
    return in_chunks(_row_losses, [hidden, targets, teacher_hidden], args, chunk_tokens)


def _uld_rows(student_hidden: torch.Tensor, *rest):
    *teacher_hidden, head, teacher_heads, proportions, temperature = rest
    logits = head(student_hidden)
    with torch.no_grad():
        teacher_logits = [h(rows).float() for h, rows in zip(teacher_heads, teacher_hidden)]
        target = mean_sorted_target(teacher_logits, proportions, temperature)
    return (uld_distance(logits, target, temperature),)


def chunked_uld_distances(
    hidden: torch.Tensor,
    head: Callable,
    teacher_hidden: list[torch.Tensor],
    teacher_heads: list[Callable],
    proportions: list[float],
    *,
    temperature: float = 1.0,
    chunk_tokens: int | None = 256,
) -> torch.Tensor:
    """[rows] ULD distance of each aligned target row (`uld_distance` from the teachers'
    `mean_sorted_target`), the output layers run `chunk_tokens` rows at a time under activation
    checkpointing (`models.heads.in_chunks`), so no [tokens, vocabulary] tensor outlives its chunk.

    Args:
        hidden: [rows, width] student rows (its kind's `token_rows`) at the aligned positions.
        head: the student's rows -> logits.
        teacher_hidden, teacher_heads: each teacher's rows at the same aligned positions (in its
            own tokens) and its output layer; run under no_grad.
        proportions: each teacher's share of the target, summing to 1.
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    args = (head, teacher_heads, proportions, temperature)
    return in_chunks(_uld_rows, [hidden, *teacher_hidden], args, chunk_tokens)[0]
