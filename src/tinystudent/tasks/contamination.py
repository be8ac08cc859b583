"""Test questions leaking into what a student learns from, found by their text.

Splits are checked by id elsewhere; a question copied into another dataset under another id (or
pasted into a training passage) is only found by its text. Texts are compared normalised: lower
case, every run of characters other than letters and digits as one space. A question is its text
and its choices (ARC repeats a question stem with other options, which is another question; a
yes/no question is its text), and, when both have evidence, its evidence: the same question asked
of mostly other evidence (at most `SAME_EVIDENCE` of their words in common) is another question
(Qasper asks "Do they report results only on English data?" of many papers). A training or
validation question equal to a test question, or a
training passage (the text a cut student recovers on) that contains a test question's text, is
contamination: an error that names the ids, so no verdict rests on questions the student has
seen. Some published splits hold such repeats (TinyLLM's OpenBookQA: 14 training questions are
test questions); `drop_contaminated` leaves them out of training instead, and says which.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

from tinystudent.tasks.schema import Example

_NOT_WORD = re.compile(r"[^0-9a-z]+")
MIN_PASSAGE_MATCH = 20  # characters: shorter test questions ("Is it?") are not looked for in passages
SAME_EVIDENCE = 0.5  # share of evidence words two questions must have in common to be one question
COMPARED = (
    "normalised question text and choices, and evidence when both have some (half its words in common); "
    "passages: normalised question text"
)


def normalise(text: str) -> str:
    """Lower case, each run of non-alphanumeric characters a single space, stripped."""
    return _NOT_WORD.sub(" ", text.lower()).strip()


def question_key(example: Example) -> str:
    """The question as contamination compares it: its normalised text and choices."""
    return " | ".join([normalise(example.question), *sorted(normalise(str(c)) for c in example.choices)])


class Contamination(ValueError):
    """Training or validation data holds test questions."""


def _words(text: str | None) -> set[str]:
    return set(normalise(text or "").split())


def same_evidence(a: Example, b: Example) -> bool:
    """Whether two questions of the same text read the same evidence (or either reads none)."""
    if not a.context or not b.context:
        return True
    mine, theirs = _words(a.context), _words(b.context)
    return len(mine & theirs) >= SAME_EVIDENCE * len(mine | theirs)


def contaminated(test: Sequence[Example], examples: Sequence[Example]) -> dict[str, str]:
    """Id of each of `examples` that is a test question -> that test question's id."""
    by_key: dict[str, list[Example]] = {}
    for ex in test:
        by_key.setdefault(question_key(ex), []).append(ex)
    found = {}
    for ex in examples:
        same = [t for t in by_key.get(question_key(ex), []) if same_evidence(ex, t)]
        if same:
            found[ex.id] = same[0].id
    return found


def drop_contaminated(
    test: Sequence[Example], learnt: dict[str, list[Example]]
) -> tuple[dict[str, list[Example]], dict[str, list[str]]]:
    """`learnt` without its test questions, and the ids left out of each split."""
    kept, dropped = {}, {}
    for split, examples in learnt.items():
        found = contaminated(test, examples)
        kept[split] = [ex for ex in examples if ex.id not in found]
        if found:
            dropped[split] = sorted(found)
    return kept, dropped


def check_contamination(
    test: Sequence[Example], learnt: Mapping[str, Sequence[Example]], passages: Iterable[str] = ()
) -> dict:
    """Compare every question of `learnt` (split name -> questions) and every passage with the
    test questions; return what was checked, with an overlap of zero.

    Raises:
        Contamination: naming the overlapping ids (learnt and test) and how many there are.
    """
    found, checked = [], {}
    for split, examples in learnt.items():
        checked[split] = len(examples)
        found += [f"{split} {mine!r} = test {theirs!r}" for mine, theirs in contaminated(test, examples).items()]
    passages = list(passages)
    if passages:
        checked["passages"] = len(passages)
        texts = {normalise(ex.question): ex.id for ex in test}
        wanted = [(key, qid) for key, qid in texts.items() if len(key) >= MIN_PASSAGE_MATCH]
        for number, passage in enumerate(passages):
            text = f" {normalise(passage)} "
            found += [f"passage {number} contains test {qid!r}" for key, qid in wanted if f" {key} " in text]
    if found:
        raise Contamination(
            f"{len(found)} test question(s) appear in what the student learns from: {'; '.join(found[:5])}"
            f"{' ...' if len(found) > 5 else ''}. Remove them from the training data, or test on other questions"
            " (a study can leave them out of training with task.contamination: drop)"
        )
    return {"test_questions": len(test), "checked": checked, "overlap": 0, "compared": COMPARED}
