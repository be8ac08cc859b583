"""Scoring each choice of a question: its log-likelihood as a continuation of the prompt, or, for a
cross-encoder, its share of a softmax over the question's (prompt, choice) pairs.

`score_choices` tokenizes, batches and times; the model's kind (`models.kinds`) encodes a
question and scores a batch. A causal model runs each question's prompt once, with all of its
choices in the same row behind a mask that keeps each choice to the prompt and itself, and its
output layer only where a choice token is predicted. On the CPU the linear layers run on
weights reordered once for oneDNN (`models.packed_linears`). `score_choices_naive` is the plain
one-forward-per-choice approach, kept as the reference the fast path is checked and
benchmarked against.

Tokenisation follows lm-evaluation-harness: the continuation's tokens are those of
`context + continuation` past the tokens of `context` alone, no special tokens are added, and an
empty context is replaced by the end-of-text token.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from tinystudent.evaluation.batching import token_batches
from tinystudent.models.kinds import ModelKind, kind_adapter
from tinystudent.models.packed_linears import packed_linears
from tinystudent.models.requests import ChoiceRequest, encode_request

# Padded tokens per scoring forward pass by default: enough to keep a CPU's cores busy, small
# enough that a batch of long prompts does not hold gigabytes of activations.
TOKEN_BUDGET = 8192


def encode_for_scoring(tokenizer, kind: str | ModelKind, request: ChoiceRequest) -> tuple[list[int], list[list[int]]]:
    """Prompt tokens and continuation tokens as the model of `kind` scores them."""
    return kind_adapter(kind).encode_choices(tokenizer, request)


def score_choices(
    model,
    tokenizer,
    kind: str | ModelKind,
    requests: list[ChoiceRequest],
    batch_size: int = 16,
    device: torch.device | None = None,
    on_batch: Callable[[int, float], None] | None = None,
    token_budget: int = TOKEN_BUDGET,
    max_length: int = 512,
) -> list[list[float]]:
    """Each choice's score, for every request (in request order): the sum of its tokens'
    log-probabilities, or a cross-encoder's log-softmax over the question's choices.

    Requests are sorted by length and batched by a token budget, so a batch's prompts are about
    equally long and little of the work is padding.

    Args:
        model, tokenizer: the model and its tokenizer.
        kind: the model's kind (`causal`, `seq2seq`, `encoder`) or its `ModelKind`.
        requests: prompts and continuations.
        batch_size: most questions per forward pass (all of a question's choices go together).
        on_batch: called after each batch with (number of questions, seconds), for cost tracking.
        token_budget: most padded prompt-and-choice tokens per batch.
        max_length: a cross-encoder's longest (prompt, choice) pair; longer prompts are cut at
            their end as a last resort (prompts should already fit, see `evaluation.fit`).
    """
    adapter = kind_adapter(kind)
    device = device or next(model.parameters()).device
    encoded = [adapter.encode_choices(tokenizer, r, max_length) for r in requests]
    results: list[list[float]] = [[] for _ in requests]
    with packed_linears(model, device):
        for group in _batch_groups(adapter, encoded):
            lengths = [adapter.encoded_length(encoded[i]) for i in group]
            for batch in token_batches(lengths, batch_size, token_budget):
                chosen = [group[k] for k in batch]
                started = time.perf_counter()
                scores = adapter.score_encoded(model, tokenizer, [encoded[i] for i in chosen], device)
                for index, row in zip(chosen, scores):
                    results[index] = row
                if on_batch:
                    on_batch(len(chosen), time.perf_counter() - started)
    return results


def _batch_groups(adapter: ModelKind, encoded: list) -> list[list[int]]:
    """Request indices grouped by what a batch must share (`ModelKind.encoded_group`), in order."""
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(encoded):
        groups.setdefault(adapter.encoded_group(item), []).append(index)
    return [groups[key] for key in sorted(groups)]


@torch.no_grad()
def score_choices_naive(
    model, tokenizer, requests: list[ChoiceRequest], device: torch.device | None = None
) -> list[list[float]]:
    """The reference: one full forward pass per (question, choice), causal models only."""
    device = device or next(model.parameters()).device
    results = []
    for request in requests:
        context_ids, conts = encode_request(tokenizer, request)
        row = []
        for cont in conts:
            ids = torch.tensor([context_ids + cont], device=device)
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            positions = torch.arange(len(context_ids) - 1, len(context_ids) + len(cont) - 1, device=device)
            row.append(logprobs[positions, torch.tensor(cont, device=device)].sum().item())
        results.append(row)
    return results


def score_choices_encoder(
    model,
    tokenizer,
    requests: list[ChoiceRequest],
    batch_size: int = 16,
    max_length: int = 512,
    on_batch: Callable[[int, float], None] | None = None,
    token_budget: int = TOKEN_BUDGET,
) -> list[list[float]]:
    """Log-softmax over choices of a multiple-choice cross-encoder (BERT, MiniLM): `score_choices`
    for the `encoder` kind.

    Each choice is the pair (prompt, choice text). Prompts should already fit `max_length` with
    their choices (`evaluation.fit`); anything longer is cut from the prompt's end as a last
    resort. Questions with the same number of choices are batched by a token budget, longest first.
    """
    return score_choices(model, tokenizer, "encoder", requests, batch_size, None, on_batch, token_budget, max_length)
