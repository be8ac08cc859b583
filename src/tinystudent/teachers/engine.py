"""Running a local causal or seq2seq model: batched generation and prompt-token log-probabilities.

`generate_rows` extends `evaluation.generative.generate_texts` with what teachers and the server
need per row of a batch: its own token limit, its own stop strings, and its own sampling seed.
Sampling happens in a logits processor with one random generator per row, so a row's sample
depends only on its seed, never on the rows it shares a batch with (a cached, resumed run then
samples the same text as an uninterrupted one).

`token_logprobs` runs token sequences through a causal model once and returns each token's
log-probability given the tokens before it: the server's `echo` + `logprobs` answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from tinystudent.evaluation.scoring import pad_rows
from tinystudent.teachers.base import Generation

# Tokens per forward pass when scoring prompts: bounds the [tokens, vocabulary] logits tensor
# (4096 x 49152 float32 = 800 MB for SmolLM2's vocabulary).
SCORE_TOKEN_BUDGET = 4096


@dataclass(frozen=True)
class RowParams:
    """Per-row generation settings (a server batch mixes requests with different ones)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()


def adds_special_tokens(tokenizer, kind: str, text: str) -> bool:
    """Special tokens (a BOS) are added unless the text already starts with them, as a chat
    template's output does; seq2seq encoders always get theirs (T5's EOS)."""
    bos = getattr(tokenizer, "bos_token", None)
    return kind != "causal" or not (bos and text.startswith(bos))


def encode_prompt(tokenizer, kind: str, text: str) -> list[int]:
    """Token ids of a prompt (see `adds_special_tokens`)."""
    return tokenizer.encode(text, add_special_tokens=adds_special_tokens(tokenizer, kind, text))


def eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


class RowSampler(LogitsProcessor):
    """Samples each row with its own seeded generator and returns one-hot scores, so the greedy
    step of `generate` takes exactly the sampled token. Greedy rows pass through unchanged."""

    def __init__(self, rows: Sequence[RowParams]):
        self.rows = rows
        self.generators: list[torch.Generator | None] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None:
            self.generators = [
                torch.Generator(device=scores.device).manual_seed(r.seed % 2**63) if r.temperature > 0 else None
                for r in self.rows
            ]
        out = scores.clone()
        for i, (row, generator) in enumerate(zip(self.rows, self.generators)):
            if generator is None:
                continue
            token = sample_token(scores[i], row.temperature, row.top_p, generator)
            out[i].fill_(float("-inf"))
            out[i, token] = 0.0
        return out


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from softmax(logits / temperature), restricted to the top_p nucleus."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the token that crosses top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


class RowStopper(StoppingCriteria):
    """Per-row stopping: a row is done at its own token limit or when its recent text holds one of
    its stop strings. Only the last few tokens are decoded at each step, which keeps this cheap."""

    def __init__(self, tokenizer, rows: Sequence[RowParams], start: int):
        self.tokenizer, self.rows, self.start = tokenizer, rows, start
        self.tail = max([len(s) for r in rows for s in r.stop] + [0]) + 8
        self.finished_at: list[int | None] = [None] * len(rows)  # new tokens when a row stopped

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.start
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i, row in enumerate(self.rows):
            if self.finished_at[i] is not None:
                done[i] = True
            elif generated >= row.max_new_tokens:
                done[i] = True
            elif row.stop and generated > 0:
                tail = self.tokenizer.decode(input_ids[i, -min(generated, self.tail) :], skip_special_tokens=True)
                done[i] = any(s in tail for s in row.stop)
            if done[i] and self.finished_at[i] is None:
                self.finished_at[i] = generated
        return done


def _finish(
    tokenizer, ids: list[int], row: RowParams, stop_ids: set[int], finished_at: int | None
) -> tuple[str, list[int], str]:
    """Cut a row's new tokens where it stopped (the tokens after are padding), at its end of
    text, its token limit and its first stop string."""
    reason = "length"
    if finished_at is not None:
        ids = ids[:finished_at]
    for n, token in enumerate(ids):
        if token in stop_ids:
            ids, reason = ids[:n], "stop"
            break
    ids = ids[: row.max_new_tokens]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cut = [text.index(s) for s in row.stop if s and s in text]
    if cut:
        text, reason = text[: min(cut)], "stop"
    return text, ids, reason


@torch.no_grad()
def generate_rows(
    model, tokenizer, kind: str, prompt_ids: list[list[int]], rows: Sequence[RowParams]
) -> list[tuple[Generation, list[int]]]:
    """Generate for one batch of tokenised prompts, each row with its own settings.

    Returns, per row, the `Generation` and the ids of its kept new tokens.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop_ids = eos_ids(model, tokenizer)
    if kind == "causal":
        ids, mask = pad_rows(prompt_ids, pad, "left")
        ids, mask = ids.to(device), mask.to(device)
        start = ids.shape[1]
    else:
        width = max(len(r) for r in prompt_ids)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in prompt_ids], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in prompt_ids], device=device)
        start = 1  # the decoder starts from one start token
    base = model.generation_config
    config = GenerationConfig(
        max_new_tokens=max(r.max_new_tokens for r in rows),
        do_sample=False,
        num_beams=1,
        eos_token_id=sorted(stop_ids) or None,
        pad_token_id=pad,
        bos_token_id=base.bos_token_id,
        decoder_start_token_id=base.decoder_start_token_id,
    )
    processors = LogitsProcessorList([RowSampler(rows)] if any(r.temperature > 0 for r in rows) else [])
    stopper = RowStopper(tokenizer, rows, start)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_config=config,
        logits_processor=processors,
        stopping_criteria=[stopper],
    )
    results = []
    for i, row in enumerate(rows):
        text, kept, reason = _finish(tokenizer, out[i, start:].tolist(), row, stop_ids, stopper.finished_at[i])
        results.append((Generation(text, len(prompt_ids[i]), len(kept), reason), kept))
    return results


@dataclass
class TokenLogprobs:
    """Log-probabilities of a token sequence under a causal model.

    Attributes:
        logprobs: per token, log P(token | tokens before it); None for the first token.
        top: per token, the `top_n` most likely tokens at that position ({id: logprob}), or None.
        next_logprobs: the distribution after the last token (to pick one more token).
    """

    logprobs: list[float | None]
    top: list[dict[int, float] | None]
    next_logprobs: torch.Tensor


def _score_chunks(rows: list[list[int]], budget: int):
    """Group rows so that rows x longest row stays within the token budget."""
    chunk: list[int] = []
    for index in sorted(range(len(rows)), key=lambda i: len(rows[i])):
        longest = max([len(rows[j]) for j in chunk] + [len(rows[index])])
        if chunk and longest * (len(chunk) + 1) > budget:
            yield chunk
            chunk = []
        chunk.append(index)
    if chunk:
        yield chunk


@torch.no_grad()
def token_logprobs(
    model, pad_id: int, rows: list[list[int]], top_n: int = 0, budget: int = SCORE_TOKEN_BUDGET
) -> list[TokenLogprobs]:
    """Each token's log-probability given the tokens before it, for every row (causal models).

    Rows are right-padded (so positions need no adjustment) and batched by a token budget.
    """
    device = next(model.parameters()).device
    results: list[TokenLogprobs | None] = [None] * len(rows)
    for chunk in _score_chunks(rows, budget):
        width = max(len(rows[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for n, i in enumerate(chunk):
            ids[n, : len(rows[i])] = torch.tensor(rows[i])
            mask[n, : len(rows[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for n, i in enumerate(chunk):
            length = len(rows[i])
            logprobs = torch.log_softmax(logits[n, :length].float(), dim=-1)  # one row at a time
            targets = torch.tensor(rows[i][1:], device=device)
            picked = logprobs[torch.arange(length - 1, device=device), targets].tolist()
            top: list[dict[int, float] | None] = [None] * length
            if top_n:
                values, indices = logprobs[: length - 1].topk(top_n, dim=-1)
                for t in range(length - 1):
                    top[t + 1] = dict(zip(indices[t].tolist(), values[t].tolist()))
            results[i] = TokenLogprobs([None] + picked, top, logprobs[length - 1].cpu())
        del logits
    return results  # type: ignore[return-value]
