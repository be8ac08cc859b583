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

from tinystudent.evaluation.batching import token_batches


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


@functools.cache
def _cache_kwarg_of(model_class: type) -> str:
    """Read once per model class, not once per scoring batch."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _grouped(encoded, scores: list[float]) -> list[list[float]]:
    """Flat per-continuation scores back into one list per question."""
    grouped, k = [], 0
    for _, conts in encoded:
        grouped.append(scores[k : k + len(conts)])
        k += len(conts)
    return grouped


@torch.no_grad()
def _score_causal_batch(
    model, pad_id: int, encoded: list[tuple[list[int], list[list[int]]]], device: torch.device
) -> list[list[float]]:
    from transformers import DynamicCache

    prompts = [ctx for ctx, _ in encoded]
    # Right padding and no attention mask: in a causal model a real token never attends to the
    # padding after it, so the prompt pass takes the fast, mask-free causal attention path.
    prompt_ids, prompt_mask = pad_rows(prompts, pad_id, "right")
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    lengths = prompt_mask.sum(-1)
    last = lengths - 1
    kept = torch.unique(last)  # logits only at each row's last prompt position (sorted batches: few)
    cache = DynamicCache(config=model.config)
    cache_arg = cache_kwarg(model)
    out = model(input_ids=prompt_ids, use_cache=True, logits_to_keep=kept, **{cache_arg: cache})
    row_logits = out.logits[torch.arange(len(prompts), device=device), torch.searchsorted(kept, last)]
    first_logprobs = torch.log_softmax(row_logits.float(), dim=-1)  # predicts each 1st choice token

    owner = [i for i, (_, conts) in enumerate(encoded) for _ in conts]
    conts = [c for _, cs in encoded for c in cs]
    scores = [first_logprobs[owner[n], tokens[0]].item() for n, tokens in enumerate(conts)]
    longer = [n for n, tokens in enumerate(conts) if len(tokens) > 1]
    if longer:  # one-token choices (yes/no) are scored by the prompt's pass alone
        # Tokens 1.. of a choice are predicted by its tokens 0..-2 run on top of the prompt's cache;
        # the choice's last token is never fed, its prediction is not needed.
        index = torch.tensor([owner[n] for n in longer], device=device)
        cache.batch_select_indices(index)  # filled in place by the prompt's forward
        cont_ids, cont_mask = pad_rows([conts[n][:-1] for n in longer], pad_id)
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        start = lengths[index]
        cont_positions = start[:, None] + torch.arange(cont_ids.shape[1], device=device)[None]
        mask = torch.cat([prompt_mask[index], cont_mask], dim=-1)
        logits = model(
            input_ids=cont_ids, attention_mask=mask, position_ids=cont_positions, use_cache=True, **{cache_arg: cache}
        ).logits.float()
        logsumexp = torch.logsumexp(logits, dim=-1)
        for row, n in enumerate(longer):
            tail = torch.tensor(conts[n][1:], device=device)
            steps = torch.arange(len(tail), device=device)
            scores[n] += (logits[row, steps, tail] - logsumexp[row, steps]).sum().item()
    return _grouped(encoded, scores)


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
    return _grouped(encoded, token_lp.sum(-1).tolist())


# Padded tokens per scoring forward pass by default: enough to keep a CPU's cores busy, small
# enough that a batch of long prompts does not hold gigabytes of activations.
TOKEN_BUDGET = 8192


def encode_for_scoring(tokenizer, kind: str, request: ChoiceRequest) -> tuple[list[int], list[list[int]]]:
    """Prompt tokens and continuation tokens as the model of `kind` scores them."""
    if kind == "causal":
        return encode_request(tokenizer, request)
    return (
        tokenizer.encode(request.context),
        [tokenizer.encode(c, add_special_tokens=False) for c in request.continuations],
    )


def score_choices(
    model,
    tokenizer,
    kind: str,
    requests: list[ChoiceRequest],
    batch_size: int = 16,
    device: torch.device | None = None,
    on_batch: Callable[[int, float], None] | None = None,
    token_budget: int = TOKEN_BUDGET,
) -> list[list[float]]:
    """Sum of log-probabilities of each continuation, for every request (in request order).

    Requests are sorted by length and batched by a token budget, so a batch's prompts are about
    equally long and little of the work is padding.

    Args:
        model, tokenizer: a causal or seq2seq language model and its tokenizer.
        kind: `causal` or `seq2seq`.
        requests: prompts and continuations.
        batch_size: most questions per forward pass (all of a question's choices go together).
        on_batch: called after each batch with (number of questions, seconds), for cost tracking.
        token_budget: most padded prompt-and-choice tokens per batch.
    """
    import time

    device = device or next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scorer = {"causal": _score_causal_batch, "seq2seq": _score_seq2seq_batch}[kind]
    encoded = [encode_for_scoring(tokenizer, kind, r) for r in requests]
    lengths = [len(ctx) + max(map(len, conts)) for ctx, conts in encoded]
    results: list[list[float]] = [[] for _ in requests]
    for batch in token_batches(lengths, batch_size, token_budget):
        started = time.perf_counter()
        for index, row in zip(batch, scorer(model, pad_id, [encoded[i] for i in batch], device)):
            results[index] = row
        if on_batch:
            on_batch(len(batch), time.perf_counter() - started)
    return results


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


@torch.no_grad()
def score_choices_encoder(
    model,
    tokenizer,
    requests: list[ChoiceRequest],
    batch_size: int = 16,
    max_length: int = 512,
    on_batch: Callable[[int, float], None] | None = None,
    token_budget: int = TOKEN_BUDGET,
) -> list[list[float]]:
    """Log-softmax over choices of a multiple-choice cross-encoder (BERT, MiniLM).

    Each choice is the pair (prompt, choice text). Prompts should already fit `max_length` with
    their choices (`evaluation.fit`); anything longer is cut from the prompt's end as a last
    resort. Questions with the same number of choices are batched by a token budget, longest first.
    """
    import time

    device = next(model.parameters()).device
    pairs = []
    for r in requests:
        enc = tokenizer(
            [r.context] * len(r.continuations),
            [c.strip() for c in r.continuations],
            truncation="only_first",
            max_length=max_length,
        )
        pairs.append([{k: enc[k][c] for k in enc} for c in range(len(r.continuations))])
    results: list[list[float]] = [[] for _ in requests]
    for width in sorted({len(r.continuations) for r in requests}):
        members = [i for i, r in enumerate(requests) if len(r.continuations) == width]
        lengths = [max(len(p["input_ids"]) for p in pairs[i]) * width for i in members]
        for batch in token_batches(lengths, batch_size, token_budget):
            started = time.perf_counter()
            chosen = [members[k] for k in batch]
            rows = [pair for i in chosen for pair in pairs[i]]
            enc = tokenizer.pad(rows, return_tensors="pt").to(device)
            enc = {k: v.view(len(chosen), width, -1) for k, v in enc.items()}
            logits = model(**enc).logits.float()
            for i, row in zip(chosen, torch.log_softmax(logits, dim=-1).tolist()):
                results[i] = row
            if on_batch:
                on_batch(len(chosen), time.perf_counter() - started)
    return results
