"""A question to score as a prompt and its continuations (`ChoiceRequest`), tokenized the way
lm-evaluation-harness does, and flat per-continuation scores grouped back by question."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ChoiceRequest:
    """One question to score: the prompt and the continuations (choices with their leading space)."""

    context: str
    continuations: list[str]


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    trailing = len(context) - len(context.rstrip())
    if trailing:
        continuation = context[-trailing:] + continuation
        context = context[:-trailing]
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    if not context_ids:
        context_ids = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id]
        return context_ids, tokenizer.encode(continuation, add_special_tokens=False)
    return context_ids, whole[len(context_ids) :]


def encode_request(tokenizer, request: ChoiceRequest) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompt (shared by all choices) and of each continuation."""
    pairs = [_encode_pair(tokenizer, request.context, c) for c in request.continuations]
    context_ids = pairs[0][0]
    continuations = []
    for ctx, cont in pairs:
        if ctx != context_ids:  # cannot happen: the context is encoded alone each time
            raise AssertionError("context tokens differ between choices")
        continuations.append(cont)
    return context_ids, continuations


def scores_by_question(encoded, scores: list[float]) -> list[list[float]]:
    """Flat per-continuation scores back into one list per question."""
    grouped, k = [], 0
    for _, conts in encoded:
        grouped.append(scores[k : k + len(conts)])
        k += len(conts)
    return grouped
