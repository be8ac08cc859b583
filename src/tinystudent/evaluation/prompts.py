"""Prompt templates for scoring, following lm-evaluation-harness where it defines one.

ARC (and SciQ, BioASQ, PubMedQA): `Question: {question}\\nAnswer:` with evidence in front when the
example has some; OpenBookQA: the bare question stem. Each choice is scored as ` {choice}`.
"""

from __future__ import annotations

import hashlib
import random

from tinystudent.tasks.schema import Example

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
STYLES = ("arc", "openbookqa", "context")


def prompt_style(task_name: str, examples: list[Example]) -> str:
    """The lm-evaluation-harness style for a task: OpenBookQA's bare stem, evidence first, or ARC's."""
    lowered = task_name.lower()
    if "openbookqa" in lowered or "obqa" in lowered:
        return "openbookqa"
    if examples and any(ex.context for ex in examples[:20]):
        return "context"
    return "arc"


def choice_context(example: Example, style: str) -> str:
    """The text each choice continues."""
    if style == "openbookqa":
        return example.question
    if style == "context" and example.context:
        return f"Context: {example.context}\nQuestion: {example.question}\nAnswer:"
    return f"Question: {example.question}\nAnswer:"


def choice_continuations(example: Example) -> list[str]:
    """Each choice with the target delimiter (a leading space) the harness puts in front."""
    return [f" {choice}" for choice in example.choices]


def lettered_question(example: Example) -> str:
    """The question with lettered options, for generative answering and teachers."""
    lines = []
    if example.context:
        lines.append(f"Context: {example.context}")
    lines.append(f"Question: {example.question}")
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(example.choices)]
    return "\n".join(lines)


def draw_shots(example: Example, pool: list[Example], k: int, seed: int) -> list[Example]:
    """k in-context examples from `pool` (never the question itself), seeded per question."""
    if k <= 0:
        return []
    candidates = sorted((ex for ex in pool if ex.id != example.id), key=lambda ex: ex.id)  # order-free
    if len(candidates) < k:
        raise ValueError(
            f"{k} in-context examples were asked for but the pool has only {len(candidates)} other questions"
        )
    digest = hashlib.sha256(f"{seed}:{example.id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).sample(candidates, k)


def fewshot_block(shot: Example, style: str) -> str:
    """One solved in-context example as lm-evaluation-harness shows it: the prompt, the gold
    choice as its continuation, a blank line."""
    return f"{choice_context(shot, style)} {shot.answer_text}\n\n"
