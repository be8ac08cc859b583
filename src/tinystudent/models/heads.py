"""Output layers: what turns a model's final hidden states into logits, which layers can be fused,
the log-probability of target tokens a chunk of rows at a time, and continuation log-probabilities
summed into a [questions, choices] score table."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tinystudent.models.batches import ChoiceBatch, required

# Score of a padded (absent) choice: finite, so gradients stay finite, and exp() of it is 0.
PAD_SCORE = -1e9


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers stay injected in it)."""
    # PEFT's method, which Module.__getattr__ types as Tensor | Module.
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]


def causal_head(core) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden states -> logits, including the logit scalings some architectures apply."""
    head = core.get_output_embeddings()
    config = core.config
    multiply = getattr(config, "logit_scale", None)  # Cohere
    divide = getattr(config, "logits_scaling", None)  # Granite
    softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3

    def logits_of(hidden: torch.Tensor) -> torch.Tensor:
        logits = head(hidden)
        if multiply:
            logits = logits * multiply
        if divide:
            logits = logits / divide
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return logits_of


@torch.no_grad()
def check_head(core, name: str) -> None:
    """Refuse architectures whose logits are not `causal_head(core)` of the body's output."""
    was_training = core.training
    core.eval()
    device = next(core.parameters()).device
    vocab = core.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(6, device=device)[None] * 7 + 3) % vocab
    full = core(input_ids=ids, use_cache=False).logits.float()
    split = causal_head(core)(core.base_model(input_ids=ids, use_cache=False).last_hidden_state).float()
    core.train(was_training)
    if not torch.allclose(full, split, atol=1e-3 * max(1.0, full.abs().max().item()), rtol=1e-3):
        raise ValueError(
            f"{name} ({type(core).__name__}): its logits are not its output layer applied "
            "to its final hidden states, so the chunked losses cannot train it"
        )


def plain_linear_head(core) -> torch.nn.Linear | None:
    """The output layer when logits are exactly `head(hidden)`, so it can be fused."""
    head = core.get_output_embeddings()
    config = core.config
    scaled = any(getattr(config, k, None) for k in ("logit_scale", "logits_scaling", "final_logit_softcapping"))
    return head if can_fuse(head) and not scaled else None


def choice_table(
    cb: ChoiceBatch, logprobs: torch.Tensor, sequence_of_row: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuation token log-probabilities summed into the [questions, max choices] score table
    (PAD_SCORE on padding), and the gold continuations' token log-probabilities.

    Args:
        logprobs: [rows] log-probability of each continuation token.
        sequence_of_row: [rows] the (question, choice) sequence each token belongs to.
    """
    question, choice = required(cb.question, "question"), required(cb.choice, "choice")
    gold_sequence = required(cb.gold_sequence, "gold_sequence")
    per_sequence = torch.zeros(question.shape[0], device=logprobs.device).index_add(0, sequence_of_row, logprobs)
    scores = torch.full(cb.choice_mask.shape, PAD_SCORE, device=logprobs.device)
    scores = scores.index_put((question, choice), per_sequence)
    gold_rows = logprobs[gold_sequence[sequence_of_row]]
    return scores, gold_rows


def can_fuse(head) -> bool:
    """Only a plain linear output layer (no adapter on it, no logit scaling) is fused."""
    return type(head) is torch.nn.Linear


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[rows] log-probability of each row's target token under its [rows, vocabulary] logits."""
    return F.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def in_chunks(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    rows: list[torch.Tensor | None],
    args: tuple,
    chunk_tokens: int | None,
) -> tuple[torch.Tensor, ...]:
    """`fn(*rows, *args)` computed `chunk_tokens` rows at a time and concatenated.

    The [tokens, vocabulary] logits are the memory peak of language-model training; computed this
    way they exist for one chunk at a time only. While gradients flow, each chunk runs under
    activation checkpointing, so backward recomputes its logits instead of keeping them: peak
    memory is set by the chunk, not by batch x tokens x vocabulary (the chunked cross-entropy of
    Liger-Kernel/torchtune). `rows` are [rows, ...] tensors sliced alike (None passes through);
    `fn` returns a tuple of [rows] tensors; None `chunk_tokens` computes everything at once.
    """
    first = rows[0]
    if first is None:
        raise TypeError("in_chunks needs a tensor of rows first")
    if chunk_tokens is None or first.shape[0] <= chunk_tokens:
        return fn(*rows, *args)
    pieces = []
    for start in range(0, first.shape[0], chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        sliced = [t[piece] if t is not None else None for t in rows]
        if torch.is_grad_enabled() and first.requires_grad:
            pieces.append(checkpoint(fn, *sliced, *args, use_reentrant=False))
        else:
            pieces.append(fn(*sliced, *args))
    return tuple(torch.cat(outputs) for outputs in zip(*pieces))


def _target_rows(hidden: torch.Tensor, targets: torch.Tensor, head: Callable) -> tuple[torch.Tensor]:
    return (token_logprobs(head(hidden).float(), targets),)


def target_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, head: Callable, chunk_tokens: int | None = 256
) -> torch.Tensor:
    """[rows] log-probability of each target token, the output layer run `chunk_tokens` rows at a
    time (see `in_chunks`).

    Args:
        hidden: [rows, width] final hidden states at the positions that predict `targets`.
        targets: [rows] next-token ids.
        head: hidden -> logits (the model's output layer, `causal_head`).
    """
    return in_chunks(_target_rows, [hidden, targets], (head,), chunk_tokens)[0]
