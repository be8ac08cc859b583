"""Objective strings, parsed in one place: `answer`, `rationale:<teacher>`, `choice_kd:all`, ...

An objective names a loss term (see `ObjectiveWeights`) and, for the terms learnt from teachers,
which teacher: one by name, or `all` of them. The same grammar serves the experiment config
(`methods.objectives`, `search.objective`) and `tinystudent train` (`--objective answer,rationale`,
and `--weight rationale.flan-t5-xl=2`, whose teacher follows a dot).
"""

from __future__ import annotations

from dataclasses import dataclass

TERMS = ("answer", "rationale", "choice_kd", "logit_kd", "hidden", "mutual")
FROM_TEACHERS = ("rationale", "choice_kd", "logit_kd")  # the terms that can name a teacher
EVERY_TEACHER = "all"


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective.

    Attributes:
        term: the loss term: answer, rationale, choice_kd, logit_kd, hidden or mutual.
        teacher: the teacher it learns from, `all` for every teacher, or None when none is named.
    """

    term: str
    teacher: str | None = None

    @property
    def every_teacher(self) -> bool:
        return self.teacher == EVERY_TEACHER

    def __str__(self) -> str:
        return self.term if self.teacher is None else f"{self.term}:{self.teacher}"


def parse_objective(text: str, terms: tuple[str, ...] = TERMS, separator: str = ":") -> ObjectiveSpec:
    """Parse `term`, or `term<separator>teacher` for a term learnt from teachers.

    Args:
        text: the objective as written.
        terms: the terms allowed where it was written [all of them].
        separator: what separates the term from the teacher [":"; "." in `--weight` names].
    Raises:
        ValueError: naming `text`, when the term is unknown, the teacher is empty, or a term that
            learns from no teacher names one.
    """
    term, found, teacher = text.strip().partition(separator)
    if term not in terms:
        raise ValueError(f"unknown objective {text!r}: the terms are {', '.join(terms)}")
    if found and not teacher:
        raise ValueError(f"objective {text!r}: name the teacher after {separator!r}, or leave the {separator!r} out")
    if teacher and term not in FROM_TEACHERS:
        raise ValueError(f"objective {text!r}: {term} learns from no teacher; write {term!r} alone")
    return ObjectiveSpec(term, teacher or None)


ONE_STUDENT_TERMS = tuple(term for term in TERMS if term != "mutual")  # mutual: peers learning together
EXPERIMENT_TERMS = ("answer", "rationale", "choice_kd")
EXPERIMENT_FORMS = "answer, rationale:<teacher>, rationale:all, choice_kd:<teacher> or choice_kd:all"


def parse_experiment_objective(text: str) -> ObjectiveSpec:
    """An objective of an experiment: `answer`, or a teacher's term with its teacher (or `all`).

    `logit_kd` is refused here, before anything runs: the experiment runner does not train it yet
    (`tinystudent train --objective logit_kd` does).
    """
    head = text.strip().partition(":")[0]
    if head == "logit_kd":
        raise ValueError(
            f"objective {text!r}: the experiment runner does not train logit_kd yet; "
            "use tinystudent train --objective logit_kd, or one of " + EXPERIMENT_FORMS
        )
    try:
        objective = parse_objective(text, EXPERIMENT_TERMS)
    except ValueError as err:
        if head in EXPERIMENT_TERMS:
            raise
        raise ValueError(f"unknown objective {text!r}: use {EXPERIMENT_FORMS}") from err
    if objective.term in FROM_TEACHERS and objective.teacher is None:
        raise ValueError(f"objective {text!r} needs a teacher: {objective.term}:<teacher name>")
    return objective


__all__ = [
    "EVERY_TEACHER",
    "EXPERIMENT_FORMS",
    "FROM_TEACHERS",
    "ONE_STUDENT_TERMS",
    "TERMS",
    "ObjectiveSpec",
    "parse_experiment_objective",
    "parse_objective",
]
