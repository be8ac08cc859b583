"""Log-likelihood of each choice as a continuation of the prompt.

`score_choices` runs each question's prompt through the model once: the prompt's key/value cache
is computed for a batch of questions, then repeated for each of their choices, and only the
choices' tokens are run on top of it. `score_choices_naive` is the plain one-forward-per-choice
approach, kept as the reference the fast path is checked and benchmarked against.

Tokenisation follows lm-evaluation-harness: the continuation's tokens are those of
`context + continuation` past the tokens of `context` alone, no special tokens are added, and an
empty context is replaced by the end-of-text token.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import torch


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
    return context_ids, whole[len(context_ids):]


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


def pad_rows(rows: list[list[int]], pad: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one width on the `left` or `right`, with their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def cache_kwarg(model) -> str:
    """The forward argument that takes a KV cache: `cache` in newer transformers releases,
    `past_key_values` before them (still accepted, with a deprecation warning, for a while)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes it on
    return _cache_kwarg_of(type(core))


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(model_class: type) -> str:
    """Read once per model class, not once per scoring batch."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@torch.no_grad()
def _score_causal_batch(model, pad_id: int, encoded: list[tuple[list[int], list[list[int]]]],
                        device: torch.device) -> list[list[float]]:
    from transformers import DynamicCache

    prompts = [ctx for ctx, _ in encoded]
    prompt_ids, prompt_mask = pad_rows(prompts, pad_id, "left")
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    cache_arg = cache_kwarg(model)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                use_cache=True, logits_to_keep=1, **{cache_arg: cache})
    first_logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts 1st choice token

    owner = [i for i, (_, conts) in enumerate(encoded) for _ in conts]
    conts = [c for _, cs in encoded for c in cs]
    index = torch.tensor(owner, device=device)
    cache.batch_select_indices(index)  # filled in place by the prompt's forward
    cont_ids, cont_mask = pad_rows(conts, pad_id)
    cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
    start = prompt_mask.sum(-1)[index]
    cont_positions = start[:, None] + torch.arange(cont_ids.shape[1], device=device)[None]
    mask = torch.cat([prompt_mask[index], cont_mask], dim=-1)
    logits = model(input_ids=cont_ids, attention_mask=mask, position_ids=cont_positions,
                   use_cache=True, **{cache_arg: cache}).logits.float()
    # Token k of a choice is predicted by position k-1 of the choice run, token 0 by the prompt.
    scores: list[float] = []
    logsumexp = torch.logsumexp(logits[:, :-1], dim=-1)
    for n, tokens in enumerate(conts):
        total = first_logprobs[owner[n], tokens[0]].item()
        if len(tokens) > 1:
            tail = torch.tensor(tokens[1:], device=device)
            steps = torch.arange(len(tokens) - 1, device=device)
            total += (logits[n, steps, tail] - logsumexp[n, steps]).sum().item()
        scores.append(total)
    grouped, k = [], 0
    for _, cs in encoded:
        grouped.append(scores[k: k + len(cs)])
        k += len(cs)
    return grouped


@torch.no_grad()
def _score_seq2seq_batch(model, pad_id: int, encoded, device) -> list[list[float]]:
    prompts = [ctx for ctx, _ in encoded]
    enc_ids, enc_mask = pad_rows(prompts, pad_id)
    enc_ids, enc_mask = enc_ids.to(device), enc_mask.to(device)
    encoder_out = model.get_encoder()(input_ids=enc_ids, attention_mask=enc_mask)
    owner = [i for i, (_, conts) in enumerate(encoded) for _ in conts]
    conts = [c for _, cs in encoded for c in cs]
    index = torch.tensor(owner, device=device)
    labels, label_mask = pad_rows(conts, -100)
    labels = labels.to(device)
    encoder_out.last_hidden_state = encoder_out.last_hidden_state[index]
    out = model(encoder_outputs=encoder_out, attention_mask=enc_mask[index], labels=labels)
    logprobs = torch.log_softmax(out.logits.float(), dim=-1)
    safe = labels.clamp(min=0)
    token_lp = logprobs.gather(-1, safe[..., None]).squeeze(-1) * (labels != -100)
    scores = token_lp.sum(-1).tolist()
    grouped, k = [], 0
    for _, cs in encoded:
        grouped.append(scores[k: k + len(cs)])
        k += len(cs)
    return grouped


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield start, items[start: start + size]


def score_choices(model, tokenizer, kind: str, requests: list[ChoiceRequest], batch_size: int = 16,
                  device: torch.device | None = None,
                  on_batch: Callable[[int, float], None] | None = None) -> list[list[float]]:
    """Sum of log-probabilities of each continuation, for every request.

    Args:
        model, tokenizer: a causal or seq2seq language model and its tokenizer.
        kind: `causal` or `seq2seq`.
        requests: prompts and continuations.
        batch_size: questions per forward pass (all of a question's choices go together).
        on_batch: called after each batch with (number of questions, seconds), for cost tracking.
    """
    import time

    device = device or next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scorer = {"causal": _score_causal_batch, "seq2seq": _score_seq2seq_batch}[kind]
    results: list[list[float]] = []
    for _, batch in _batches(requests, batch_size):
        started = time.perf_counter()
        encoded = [encode_request(tokenizer, r) if kind == "causal" else
                   (tokenizer.encode(r.context), [tokenizer.encode(c, add_special_tokens=False)
                                                  for c in r.continuations]) for r in batch]
        results.extend(scorer(model, pad_id, encoded, device))
        if on_batch:
            on_batch(len(batch), time.perf_counter() - started)
    return results


@torch.no_grad()
def score_choices_naive(model, tokenizer, requests: list[ChoiceRequest],
                        device: torch.device | None = None) -> list[list[float]]:
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


@torch.no_grad()
def score_choices_encoder(model, tokenizer, requests: list[ChoiceRequest], batch_size: int = 16,
                          max_length: int = 256,
                          on_batch: Callable[[int, float], None] | None = None) -> list[list[float]]:
    """Log-softmax over choices of a multiple-choice cross-encoder (BERT, MiniLM)."""
    import time

    device = next(model.parameters()).device
    results = []
    for _, batch in _batches(requests, batch_size):
        started = time.perf_counter()
        for request in batch:
            n = len(request.continuations)
            enc = tokenizer([request.context] * n, [c.strip() for c in request.continuations],
                            truncation="only_first", max_length=max_length, padding=True,
                            return_tensors="pt").to(device)
            logits = model(**{k: v[None] for k, v in enc.items()}).logits[0].float()
            results.append(torch.log_softmax(logits, dim=-1).tolist())
        if on_batch:
            on_batch(len(batch), time.perf_counter() - started)
    return results
