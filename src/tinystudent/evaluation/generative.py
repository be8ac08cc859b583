"""Generative answering: the model writes an answer (optionally reasoning first) and we parse it."""

from __future__ import annotations

import re
import time
from typing import Callable

import torch

from tinystudent.evaluation.batching import token_batches
from tinystudent.evaluation.prompts import LETTERS, lettered_question
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


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    kind: str,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    on_batch: Callable[[int, float], None] | None = None,
) -> list[str]:
    """Batched generation with the KV cache; left padding for decoder-only models. Prompts are
    batched longest first, so a batch's prompts are about equally long; texts come back in the
    prompts' order."""
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(prompts)
    if kind == "causal":
        tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=kind != "causal")["input_ids"]]
    for batch_indices in token_batches(lengths, batch_size, batch_size * max(lengths, default=1)):
        began = time.perf_counter()
        batch = [prompts[i] for i in batch_indices]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=kind != "causal").to(device)
        sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
        generated = model.generate(
            **enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
        )
        if kind == "causal":
            generated = generated[:, enc["input_ids"].shape[1] :]
        for index, text in zip(batch_indices, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            outputs[index] = text
        if on_batch:
            on_batch(len(batch), time.perf_counter() - began)
    return outputs
