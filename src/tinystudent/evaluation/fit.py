"""Fitting an input to a model's context budget without losing the question.

Every model kind, in scoring, training and teaching, fits its inputs here and in the same way:
the question and the choices are kept whole and the evidence (the example's `context`) is cut
from its end until the rendered input fits. BioASQ puts up to 1,800 tokens of evidence before a
one-line question, so cutting a long input from its end (or a tokenizer's plain truncation) would
drop the very question. Only when the question and choices alone do not fit is the question cut
too, from its start, keeping its end, where a question asks. When even the choices do not fit,
the input is refused with a clear error.

A caller gives `render`, which turns an example into the model's input text (a prompt template,
a teacher prompt with in-context examples, a cross-encoder's first segment), `count`, which
counts that text's tokens as the model will see them, and the budget in tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from tinystudent.tasks.schema import Example

EVIDENCE = "evidence"  # the end of the evidence was cut
QUESTION = "question"  # all evidence was dropped and the start of the question was cut
HOW = (
    "the end of the evidence is cut first; the question and choices are kept (the question's start is cut "
    "only when it alone does not fit)"
)
# No token is longer than this many characters in practice: a text is first cut to
# budget * MAX_CHARS_PER_TOKEN characters, so a 10 MB field never reaches the tokenizer whole.
MAX_CHARS_PER_TOKEN = 32


class InputTooLong(ValueError):
    """Even without evidence and question the input exceeds the budget (the choices are too long)."""


@dataclass(frozen=True)
class Fitted:
    """An example whose rendered input fits: `cut` says what was cut (None: nothing)."""

    example: Example
    cut: str | None
    tokens: int


def _offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character span of each token of `text` (no special tokens)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [tuple(span) for span in encoded["offset_mapping"]]


def _shrink(
    example: Example,
    field: str,
    keep_head: bool,
    render: Callable[[Example], str],
    count: Callable[[str], int],
    tokenizer,
    budget: int,
    over: int,
) -> tuple[Example, int] | None:
    """Cut `field` (`context` from its end, `question` from its start) by tokens until the
    rendered example fits; None when not even an empty field would."""
    text = getattr(example, field)
    cap = budget * MAX_CHARS_PER_TOKEN
    if len(text) > cap:
        text = text[:cap] if keep_head else text[-cap:]
        over = count(render(replace(example, **{field: text}))) - budget
    spans = _offsets(tokenizer, text)
    keep = len(spans) - over
    while keep > 0:
        part = text[: spans[keep - 1][1]].rstrip() if keep_head else text[spans[len(spans) - keep][0] :].lstrip()
        candidate = replace(example, **{field: part})
        tokens = count(render(candidate))
        if tokens <= budget:
            return candidate, tokens
        keep -= max(1, tokens - budget)
    return None


def fit_example(
    example: Example, render: Callable[[Example], str], count: Callable[[str], int], tokenizer, budget: int
) -> Fitted:
    """`example` with its evidence (then, if need be, its question) cut so `render` fits `budget`.

    Raises:
        InputTooLong: the choices alone exceed the budget.
    """
    tokens = count(render(example))
    if tokens <= budget:
        return Fitted(example, None, tokens)
    if example.context:
        shrunk = _shrink(example, "context", True, render, count, tokenizer, budget, tokens - budget)
        if shrunk:
            return Fitted(shrunk[0], EVIDENCE, shrunk[1])
        example = replace(example, context=None)
        tokens = count(render(example))
        if tokens <= budget:
            return Fitted(example, EVIDENCE, tokens)
    shrunk = _shrink(example, "question", False, render, count, tokenizer, budget, tokens - budget)
    if shrunk:
        return Fitted(shrunk[0], QUESTION, shrunk[1])
    raise InputTooLong(
        f"question {example.id!r}: its choices alone do not fit the model's input budget "
        f"of {budget} tokens; shorten the choices or use a model with a longer context"
    )


def fit_with_shots(
    example: Example,
    shots: Sequence[Example],
    render: Callable[[Example, list[Example]], str],
    render_shot: Callable[[Example], str],
    count: Callable[[str], int],
    tokenizer,
    budget: int,
) -> tuple[Fitted, list[Example]]:
    """Fit a prompt made of in-context examples (shots) and a question to `budget`.

    What the prompt needs without any evidence is set aside first; the tokens left over are shared
    equally between the evidence of each shot and of the question, so no question, neither the
    shots' nor the asked one, is cut to make room for evidence. The question's fit is measured on
    the whole prompt, so it takes whatever its shots leave unused.

    Args:
        render: (question, shots) -> the whole prompt.
        render_shot: one shot as the prompt shows it (to size a shot's share).
    """
    bare = lambda e: replace(e, context=None)  # noqa: E731
    shots = list(shots)
    needed = count(render(bare(example), [bare(shot) for shot in shots]))
    while shots and needed > budget:
        shots.pop()
        needed = count(render(bare(example), [bare(shot) for shot in shots]))
    share = max(0, budget - needed) // (len(shots) + 1)
    fitted_shots = [
        fit_example(shot, render_shot, count, tokenizer, count(render_shot(bare(shot))) + share).example
        for shot in shots
    ]
    return fit_example(example, lambda e: render(e, fitted_shots), count, tokenizer, budget), fitted_shots


def fit_examples(
    examples: Sequence[Example], render: Callable[[Example], str], count: Callable[[str], int], tokenizer, budget: int
) -> list[Fitted]:
    return [fit_example(ex, render, count, tokenizer, budget) for ex in examples]


def fit_summary(fitted: Sequence[Fitted], budget: int) -> dict:
    """How many inputs were cut, and where: recorded with every evaluation and training run."""
    return {
        "budget_tokens": budget,
        "how": HOW,
        "evidence_cut": sum(f.cut == EVIDENCE for f in fitted),
        "question_cut": sum(f.cut == QUESTION for f in fitted),
        "truncated": sum(f.cut is not None for f in fitted),
    }


def token_counter(tokenizer, special_tokens: bool = False) -> Callable[[str], int]:
    """Counts a text's tokens as the model receives it (with or without its special tokens)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=special_tokens, verbose=False)["input_ids"])

    return count
