"""Fitting an input to a model's context budget without losing the question.

Every model kind, in scoring, training and teaching, fits its inputs here and in the same way:
the question and the choices are kept whole and the evidence (the example's `context`) is made
shorter until the rendered input fits, in one of two ways (`EVIDENCE_STRATEGIES`):

- `cut`: the evidence is cut from its end;
- `select`: the evidence's sentences most related to the question (BM25, `evidence`) are kept, in
  their original order, as many whole sentences as the budget holds; when not even the most
  related one fits whole, the sentences in the order of their rank are cut from the end, so the
  best one's start is kept.

BioASQ puts up to 1,800 tokens of evidence before a one-line question, so cutting a long input
from its end (or a tokenizer's plain truncation) would drop the very question. Only when the
question and choices alone do not fit is the question cut too, from its start, keeping its end,
where a question asks. When even the choices do not fit, the input is refused with a clear error.

A caller gives `render`, which turns an example into the model's input text (a prompt template,
a teacher prompt with in-context examples, a cross-encoder's first segment), `count`, which
counts that text's tokens as the model will see them, and the budget in tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from tinystudent.evaluation.evidence import rank_sentences, split_sentences
from tinystudent.tasks.schema import Example

EVIDENCE = "evidence"  # the evidence was made shorter (its end cut, or sentences left out)
QUESTION = "question"  # all evidence was dropped and the start of the question was cut
CUT, SELECT = "cut", "select"
EVIDENCE_STRATEGIES = (CUT, SELECT)
HOW = {
    CUT: "the end of the evidence is cut first; the question and choices are kept (the question's start is cut "
    "only when it alone does not fit)",
    SELECT: "the evidence's sentences most related to the question (BM25) are kept in their original order, "
    "as many whole ones as fit; the question and choices are kept (the question's start is cut only when it "
    "alone does not fit)",
}
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


def check_strategy(evidence: str) -> str:
    if evidence not in EVIDENCE_STRATEGIES:
        raise ValueError(f"evidence must be one of {', '.join(EVIDENCE_STRATEGIES)}, got {evidence!r}")
    return evidence


def _select(
    example: Example, render: Callable[[Example], str], count: Callable[[str], int], budget: int
) -> tuple[Example, int] | None:
    """`example` with only its evidence sentences most related to the question, in their original
    order, as many whole ones as fit `budget`; None when not even one fits whole.

    Sentences are counted alone once, so the rendered input is counted again only to confirm the
    choice (a sentence's tokens can differ a little beside its neighbours)."""
    sentences = split_sentences(example.context or "")
    ranking = rank_sentences(example.question, sentences)
    room = budget - count(render(replace(example, context="")))
    chosen: list[int] = []
    for index in ranking:
        cost = count(sentences[index]) + 1  # the space that joins it to the others
        if cost <= room:
            chosen.append(index)
            room -= cost
    while chosen:
        candidate = replace(example, context=" ".join(sentences[i] for i in sorted(chosen)))
        tokens = count(render(candidate))
        if tokens <= budget:
            return candidate, tokens
        chosen.pop()  # the least related sentence chosen
    return None


def _ranked(example: Example) -> Example:
    """`example` with its evidence sentences in the order of their relation to the question."""
    sentences = split_sentences(example.context or "")
    return replace(example, context=" ".join(sentences[i] for i in rank_sentences(example.question, sentences)))


def fit_example(
    example: Example,
    render: Callable[[Example], str],
    count: Callable[[str], int],
    tokenizer,
    budget: int,
    evidence: str = CUT,
) -> Fitted:
    """`example` with its evidence (then, if need be, its question) shortened so `render` fits
    `budget`, by the strategy `evidence` (`cut` or `select`, see the module's docstring).

    Raises:
        InputTooLong: the choices alone exceed the budget.
    """
    tokens = count(render(example))
    if tokens <= budget:
        return Fitted(example, None, tokens)
    if example.context and check_strategy(evidence) == SELECT:
        selected = _select(example, render, count, budget)
        if selected:
            return Fitted(selected[0], EVIDENCE, selected[1])
        example = _ranked(example)  # the best sentence's start is what the cut below keeps
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
    evidence: str = CUT,
) -> tuple[Fitted, list[Example]]:
    """Fit a prompt made of in-context examples (shots) and a question to `budget`.

    What the prompt needs without any evidence is set aside first; the tokens left over are shared
    equally between the evidence of each shot and of the question, so no question, neither the
    shots' nor the asked one, is cut to make room for evidence. The question's fit is measured on
    the whole prompt, so it takes whatever its shots leave unused.

    Args:
        render: (question, shots) -> the whole prompt.
        render_shot: one shot as the prompt shows it (to size a shot's share).
        evidence: how each evidence is made shorter (`cut` or `select`).
    """
    bare = lambda e: replace(e, context=None)  # noqa: E731
    shots = list(shots)
    needed = count(render(bare(example), [bare(shot) for shot in shots]))
    while shots and needed > budget:
        shots.pop()
        needed = count(render(bare(example), [bare(shot) for shot in shots]))
    share = max(0, budget - needed) // (len(shots) + 1)
    fitted_shots = [
        fit_example(shot, render_shot, count, tokenizer, count(render_shot(bare(shot))) + share, evidence).example
        for shot in shots
    ]
    fitted = fit_example(example, lambda e: render(e, fitted_shots), count, tokenizer, budget, evidence)
    return fitted, fitted_shots


def fit_summary(fitted: Sequence[Fitted], budget: int, evidence: str = CUT) -> dict:
    """How many inputs were cut, and where, and how: recorded with every evaluation and training run."""
    return {
        "budget_tokens": budget,
        "evidence": evidence,
        "how": HOW[evidence],
        "evidence_cut": sum(f.cut == EVIDENCE for f in fitted),
        "question_cut": sum(f.cut == QUESTION for f in fitted),
        "truncated": sum(f.cut is not None for f in fitted),
    }


def token_counter(tokenizer, special_tokens: bool = False) -> Callable[[str], int]:
    """Counts a text's tokens as the model receives it (with or without its special tokens)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=special_tokens, verbose=False)["input_ids"])

    return count
