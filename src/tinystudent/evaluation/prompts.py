"""Prompt templates for scoring, following lm-evaluation-harness where it defines one.

ARC (and SciQ, BioASQ, PubMedQA): `Question: {question}\\nAnswer:` with evidence in front when the
example has some; OpenBookQA: the bare question stem. Each choice is scored as ` {choice}`.
"""

from __future__ import annotations

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
