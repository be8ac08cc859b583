"""Generative answering: the model writes an answer (optionally reasoning first) and we parse it.

`generate_in_batches` is the package's one way to generate text: teachers, evaluation, debate and
`serve` all run their prompts through it (and through `models.generation`: continuous batching for
causal models, `generate_rows` per batch for the others).
"""

from __future__ import annotations

import re
import time
from typing import Callable, Iterator, Sequence

from tinystudent.evaluation.batching import token_batches
from tinystudent.evaluation.prompts import LETTERS, lettered_question
from tinystudent.models.generation import (
    GeneratedText,
    PrefixCache,
    RowParams,
    decodes_continuously,
    generate_continuously,
    generate_rows,
    prompt_seed,
)
from tinystudent.models.kinds import ModelKind, kind_adapter
from tinystudent.models.packed_linears import packed_linears
from tinystudent.tasks.schema import Example

ANSWER_INSTRUCTION = "Answer with the letter of the correct option."
THINK_INSTRUCTION = "Let's think step by step, then finish with 'The answer is (X)'."


def generative_prompt(example: Example, think: bool) -> str:
    return f"{lettered_question(example)}\n{THINK_INSTRUCTION if think else ANSWER_INSTRUCTION}"


def extract_choice(text: str, choices: tuple[str, ...] | list[str]) -> int | None:
    """The option a free-text answer picks, or None when it cannot be told.

    Looks, in order, for "answer is (X)" / "answer: X", then a lone option letter at the start,
    then exactly one choice's text appearing in the answer.
    """
    letters = LETTERS[: len(choices)]
    patterns = [rf"answer\s*(?:is|:)?\s*\(?([{letters}])\)?(?![A-Za-z])", rf"^\s*\(?([{letters}])(?:[).:\s]|$)"]
    for pattern in patterns:
        found = re.findall(pattern, text, flags=re.IGNORECASE | re.MULTILINE)
        if found:
            letter = found[-1].upper() if pattern.startswith("answer") else found[0].upper()
            return letters.index(letter)
    lowered = text.lower()
    hits = [i for i, choice in enumerate(choices) if choice.strip() and choice.strip().lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def render_prompt(tokenizer, prompt: str) -> str:
    """Wrap in the model's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return f"{prompt}\nAnswer:"


def generate_in_batches(
    model,
    tokenizer,
    kind: str | ModelKind,
    prompt_ids: Sequence[list[int]],
    rows: Sequence[RowParams],
    batch_size: int = 8,
    on_batch: Callable[[int, float], None] | None = None,
) -> Iterator[tuple[int, GeneratedText]]:
    """Generate for every tokenised prompt, each with its own settings; yields (prompt index,
    generated text) as results are done, so a caller can keep each result as soon as it exists.

    A causal model keeps `batch_size` rows decoding, longest prompts first: a row that is done
    hands its slot to the next prompt (`models.generation.generate_continuously`). Other kinds
    run in batches of prompts about equally long, longest first (`batching.token_batches`), so
    little of the work is padding. Every row stops at its own token limit, end of text or stop
    string, and samples with its own seed (`models.generation`).

    Args:
        kind: the model's kind or its `ModelKind`; it must generate text.
        batch_size: most prompts decoding together.
        on_batch: called as results come with (number of prompts done, seconds since the last call).
    """
    adapter = kind_adapter(kind)
    if not adapter.generates:
        raise adapter.unsupported("generate text")
    with packed_linears(model):  # the CPU's linear layers on reordered weights, for every batch
        began = time.perf_counter()
        for done in _generated(model, tokenizer, adapter, prompt_ids, rows, batch_size):
            if on_batch:
                on_batch(len(done), time.perf_counter() - began)
                began = time.perf_counter()
            yield from done


def _generated(model, tokenizer, adapter: ModelKind, prompt_ids, rows, batch_size: int):
    """Results as they are done: one at a time from continuous decoding, else a batch at a time."""
    if decodes_continuously(adapter):
        prefixes = PrefixCache()  # few-shot exemplars every prompt starts with: run once for all
        for result in generate_continuously(model, tokenizer, prompt_ids, rows, batch_size, prefixes):
            yield [result]
        return
    lengths = [len(ids) for ids in prompt_ids]
    for batch in token_batches(lengths, batch_size, batch_size * max(lengths, default=1)):
        results = generate_rows(model, tokenizer, adapter, [prompt_ids[i] for i in batch], [rows[i] for i in batch])
        yield list(zip(batch, results))


def generate_texts(
    model,
    tokenizer,
    kind: str | ModelKind,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    on_batch: Callable[[int, float], None] | None = None,
    stop: tuple[str, ...] = (),
) -> list[str]:
    """Texts for prompts written as evaluation fits them (`ModelKind.encode_input`),
    in the prompts' order: greedy, or sampled at `temperature` with a seed per prompt derived from
    `seed`, each ending at its first `stop` string. See `generate_in_batches`."""
    adapter = kind_adapter(kind)
    prompt_ids = [adapter.encode_input(tokenizer, p) for p in prompts]
    rows = [
        RowParams(max_new_tokens, temperature if do_sample else 0.0, seed=prompt_seed(seed, p), stop=stop)
        for p in prompts
    ]
    texts = [""] * len(prompts)
    for index, generated in generate_in_batches(model, tokenizer, adapter, prompt_ids, rows, batch_size, on_batch):
        texts[index] = generated.text
    return texts
