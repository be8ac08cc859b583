"""Generating text for one batch of tokenised prompts, each row with its own settings.

Every generation in the package (teachers, evaluation, debate, `serve`) comes here through
`evaluation.generative.generate_in_batches`. A row has its own token limit, its own stop strings
and its own sampling seed. Sampling happens in a logits processor with one random generator per
row, so a row's sample depends only on its seed, never on the rows it shares a batch with (a
cached, resumed run then samples the same text as an uninterrupted one). A causal model decodes
in our own loop (`decode_causal`): a fixed number of rows decode together, a row that is done
hands its slot to the next prompt at once (continuous batching, on the KV cache of
`slot_cache.SlotCache`), and a prefix every prompt shares (few-shot exemplars) is run once
(`prefix_inputs`) and kept for every prompt (`PrefixCache`). Other kinds go through Hugging Face
`generate`, laid out by their kind (`ModelKind.generation_inputs`). Both give the same text.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from tinystudent.models.kinds import ModelKind, kind_adapter, pad_token_id


@dataclass(frozen=True)
class RowParams:
    """Per-row generation settings (a server batch mixes requests with different ones)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class GeneratedText:
    """One row's generated text.

    Attributes:
        text: the text, cut at its end of text, token limit or first stop string.
        token_ids: the kept new tokens.
        prompt_tokens: tokens of the prompt.
        finish_reason: `stop` (end of text or a stop string) or `length`.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def prompt_seed(seed: int, prompt: str) -> int:
    """A sampling seed per prompt, so a sample never depends on its batch."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt}".encode()).digest()[:8], "big") >> 1


def eos_ids(model, tokenizer) -> set[int]:
    """Every token that ends a text: the model's generation config's and the tokenizer's."""
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

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
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

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.Tensor:
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


OWN_DECODING = True  # causal models: `decode_causal` (continuous batching), else `generate`
PREFIX_MIN = 64  # tokens all of a call's prompts must share before their prefix is computed once


def shared_prefix(prompt_ids: Sequence[list[int]]) -> int:
    """How many leading tokens every prompt shares (at most the shortest prompt less one, so each
    row keeps a token of its own to start from)."""
    shortest = min(len(ids) for ids in prompt_ids)
    first = prompt_ids[0]
    n = 0
    while n < shortest - 1 and all(ids[n] == first[n] for ids in prompt_ids):
        n += 1
    return n


def _cache_argument(model) -> str:
    """The name this transformers release gives the KV cache argument (`cache` from 5.2x,
    `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class PrefixCache:
    """The KV cache of the last shared prefix run, kept for one generation call
    (`generate_in_batches`): every prompt of a few-shot evaluation starts with the same exemplars,
    so they are run through the model once for the whole call, not once for every group of
    prompts that enters the batch. A prefix that is longer or shorter reuses the part both share
    (`DynamicCache.crop`), and runs only the rest."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.cache: Any = None  # a transformers DynamicCache, once a prefix has run

    def one_row(self, model, ids: list[int], device):
        """A one-row KV cache of `ids` (the caller's to extend), computed from what is kept."""
        import copy

        from transformers import DynamicCache

        reuse = 0
        while reuse < min(len(ids), len(self.ids)) and ids[reuse] == self.ids[reuse]:
            reuse += 1
        if self.cache is not None and reuse >= PREFIX_MIN:
            cache = copy.deepcopy(self.cache)
            if reuse < len(self.ids):
                cache.crop(reuse)
        else:
            cache, reuse = DynamicCache(), 0
        if reuse < len(ids):
            rest = torch.tensor([ids[reuse:]], device=device)
            model(input_ids=rest, use_cache=True, **{_cache_argument(model): cache}, **_last_logits_only(model))
        if ids != self.ids:  # the same prefix as the last batch's: what is kept is already it
            self.ids, self.cache = list(ids), copy.deepcopy(cache)
        return cache


def _last_logits_only(model) -> dict:
    """Ask for the last position's logits only, where the model can (`logits_to_keep`): a
    prompt's other positions would cost a [tokens, vocabulary] output layer nobody reads."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def prefix_inputs(
    model, prompt_ids: Sequence[list[int]], pad: int, n: int, device, prefixes: PrefixCache | None = None
) -> tuple[dict, int]:
    """Generation inputs whose first `n` tokens, shared by every row, are run through the model
    once and cached (the few-shot exemplars of a GSM8K prompt, say): each row is the prefix, then
    padding, then its own tokens, the padding masked out. Positions follow the mask, so every
    row's tokens sit where they would without padding, and greedy outputs are the plain ones.
    `prefixes` keeps the prefix's cache for the next batch."""
    rows, width = len(prompt_ids), max(len(ids) - n for ids in prompt_ids)
    ids = torch.full((rows, n + width), pad, dtype=torch.long)
    mask = torch.zeros((rows, n + width), dtype=torch.long)
    for i, row in enumerate(prompt_ids):
        own = row[n:]
        ids[i, :n], mask[i, :n] = torch.tensor(row[:n]), 1
        ids[i, n + width - len(own) :], mask[i, n + width - len(own) :] = torch.tensor(own), 1
    cache = (prefixes or PrefixCache()).one_row(model, list(prompt_ids[0][:n]), device)
    cache.batch_repeat_interleave(rows)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), _cache_argument(model): cache}, n + width


def _next_tokens(logits: torch.Tensor, rows: Sequence[RowParams], generators: list) -> torch.Tensor:
    """Each active row's next token: greedy, or sampled with its own generator (`RowSampler`'s rule)."""
    chosen = logits.argmax(-1)
    for i, (row, generator) in enumerate(zip(rows, generators)):
        if generator is not None:
            chosen[i] = sample_token(logits[i], row.temperature, row.top_p, generator)
    return chosen


def _prefill(model, prompt_ids: Sequence[list[int]], pad: int, n: int, device, prefixes: PrefixCache | None):
    """The KV cache of every prompt but its last token (which the next decoding step writes), the
    first `n` tokens, shared by all, taken from `prefixes` (`prefix_inputs`). Returns the cache
    and its attention mask."""
    inputs, _ = prefix_inputs(model, [ids[:-1] for ids in prompt_ids], pad, n, device, prefixes)
    name = _cache_argument(model)
    cache, ids, mask = inputs[name], inputs["input_ids"], inputs["attention_mask"]
    if ids.shape[1] > n:
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        model(
            input_ids=ids[:, n:],
            attention_mask=mask,
            position_ids=positions[:, n:],
            use_cache=True,
            **{name: cache},
            **_last_logits_only(model),
        )
    return cache, mask


def decode_causal(
    model,
    tokenizer,
    prompt_ids: Sequence[list[int]],
    rows: Sequence[RowParams],
    batch_size: int,
    stop_ids: set[int],
    prefixes: PrefixCache | None = None,
) -> Iterator[tuple[int, list[int]]]:
    """Greedy or per-row sampled decoding of a causal model with its KV cache, `batch_size` rows
    at a time, longest prompts first. A row that is done (end of text, its token limit, one of its
    stop strings) leaves the batch at once and its slot takes the next prompt (continuous
    batching, `SlotCache`), so the batch stays full until the prompts run out (Hugging Face
    `generate` keeps every row to the end of the longest). A prefix every prompt shares (few-shot
    exemplars) is run once (`prefix_inputs`). Yields (prompt index, new tokens) as each row is
    done, its last token the one that ended it."""
    from tinystudent.models.slot_cache import SlotCache

    if not prompt_ids:
        return
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    n = shared_prefix(prompt_ids)
    n = n if n >= PREFIX_MIN else 0
    waiting = sorted(range(len(prompt_ids)), key=lambda i: (-len(prompt_ids[i]), i))
    slots, waiting = waiting[:batch_size], waiting[batch_size:]
    cache = SlotCache(len(slots), device)
    cache.place(list(range(len(slots))), *_prefill(model, [prompt_ids[i] for i in slots], pad, n, device, prefixes))
    generators = [
        torch.Generator(device=device).manual_seed(r.seed % 2**63) if r.temperature > 0 else None for r in rows
    ]
    tail = max([len(stop) for r in rows for stop in r.stop] + [0]) + 8
    new: list[list[int]] = [[] for _ in rows]
    feed = [prompt_ids[i][-1] for i in slots]  # each slot's next input token
    name = _cache_argument(model)
    while slots:
        mask = cache.grow()
        logits = model(
            input_ids=torch.tensor(feed, device=device).unsqueeze(1),
            attention_mask=mask,
            position_ids=mask.sum(-1, keepdim=True) - 1,
            use_cache=True,
            **{name: cache},
        ).logits[:, -1, :]
        feed = _next_tokens(logits.float(), [rows[i] for i in slots], [generators[i] for i in slots]).tolist()
        done = []
        for slot, (i, token) in enumerate(zip(slots, feed)):
            new[i].append(token)
            if _row_done(tokenizer, new[i], rows[i], stop_ids, tail):
                done.append(slot)
                yield i, new[i]
        if not done:
            continue
        refilled, gone = done[: len(waiting)], done[len(waiting) :]
        if refilled:
            taken, waiting = waiting[: len(refilled)], waiting[len(refilled) :]
            cache.place(refilled, *_prefill(model, [prompt_ids[i] for i in taken], pad, n, device, prefixes))
            for slot, i in zip(refilled, taken):
                slots[slot], feed[slot] = i, prompt_ids[i][-1]
        if gone:
            kept = [slot for slot in range(len(slots)) if slot not in gone]
            cache.keep(kept)
            slots, feed = [slots[k] for k in kept], [feed[k] for k in kept]


def _row_done(tokenizer, written: list[int], row: RowParams, stop_ids: set[int], tail: int) -> bool:
    """Whether a row's last token ended it: end of text, its token limit, or one of its stop
    strings in its last `tail` tokens' text."""
    if written[-1] in stop_ids or len(written) >= row.max_new_tokens:
        return True
    if not row.stop:
        return False
    text = tokenizer.decode(written[-tail:], skip_special_tokens=True)
    return any(stop in text for stop in row.stop)


@torch.no_grad()
def generate_rows(
    model,
    tokenizer,
    kind: str | ModelKind,
    prompt_ids: list[list[int]],
    rows: Sequence[RowParams],
    prefixes: PrefixCache | None = None,
) -> list[GeneratedText]:
    """Generate for one batch of tokenised prompts, each row with its own settings (greedy with
    the KV cache unless a row samples). A causal model decodes in our own loop
    (`generate_continuously`, the batch being all the prompts); other kinds through `generate`."""
    adapter = kind_adapter(kind)
    if decodes_continuously(adapter):
        written = dict(generate_continuously(model, tokenizer, prompt_ids, rows, len(prompt_ids), prefixes))
        return [written[i] for i in range(len(prompt_ids))]
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    stop_ids = eos_ids(model, tokenizer)
    ids, mask, start = adapter.generation_inputs(prompt_ids, pad)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    new, finished = _generate(model, tokenizer, inputs, start, rows, stop_ids, pad)
    results = []
    for i, row in enumerate(rows):
        text, kept, reason = _finish(tokenizer, new[i], row, stop_ids, finished[i])
        results.append(GeneratedText(text, kept, len(prompt_ids[i]), reason))
    return results


def decodes_continuously(kind: str | ModelKind) -> bool:
    """Whether this kind of model decodes in our own loop, with continuous batching."""
    return kind_adapter(kind).name == "causal" and OWN_DECODING


@torch.no_grad()
def generate_continuously(
    model,
    tokenizer,
    prompt_ids: Sequence[list[int]],
    rows: Sequence[RowParams],
    batch_size: int,
    prefixes: PrefixCache | None = None,
) -> Iterator[tuple[int, GeneratedText]]:
    """Generate for every tokenised prompt of a causal model, `batch_size` rows decoding at a time
    (`decode_causal`); yields (prompt index, generated text) as each row is done."""
    stop_ids = eos_ids(model, tokenizer)
    for i, new in decode_causal(model, tokenizer, prompt_ids, rows, batch_size, stop_ids, prefixes):
        text, kept, reason = _finish(tokenizer, new, rows[i], stop_ids, None)
        yield i, GeneratedText(text, kept, len(prompt_ids[i]), reason)


def _generate(
    model, tokenizer, inputs: dict, start: int, rows: Sequence[RowParams], stop_ids: set[int], pad: int
) -> tuple[list[list[int]], list[int | None]]:
    """Hugging Face `generate` with per-row sampling and stopping: every row stays in the batch
    until the last one is done. Returns each row's new tokens and where it stopped."""
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
    out = model.generate(**inputs, generation_config=config, logits_processor=processors, stopping_criteria=[stopper])
    return [out[i, start:].tolist() for i in range(len(rows))], stopper.finished_at
