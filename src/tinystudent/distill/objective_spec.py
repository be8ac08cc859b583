"""Objective strings, parsed in one place: `answer`, `rationale:<teacher>`, `choice_kd:all`, ...

An objective names a loss term (see `ObjectiveWeights`) and, for the terms learnt from teachers,
which teacher: one by name, or `all` of them. The same grammar serves the experiment config
(`methods.objectives`, `search.objective`) and `tinystudent train` (`--objective answer,rationale`,
and `--weight rationale.flan-t5-xl=2`, whose teacher follows a dot).
"""

from __future__ import annotations

from dataclasses import dataclass

from tinystudent.distill import terms as registry

EVERY_TEACHER = "all"


def term_names(where: str = "any") -> tuple[str, ...]:
    """The registered terms an objective may name: `any`; `one_student` (not the peers' terms of
    mutual learning, which `train --mutual` adds); `experiment` (what the study runner trains)."""
    found = registry.terms()
    if where == "one_student":
        found = tuple(t for t in found if not t.with_peers)
    elif where == "experiment":
        found = tuple(t for t in found if t.in_experiments)
    return tuple(t.name for t in found)


def names_teacher(name: str) -> bool:
    """Whether an objective string may name a teacher after term `name` (`rationale:flan-t5-xl`)."""
    return registry.term(name).names_teacher


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective.

    Attributes:
        term: the loss term (a registered `distill.terms` name: answer, rationale, choice_kd, ...).
        teacher: the teacher it learns from, `all` for every teacher, or None when none is named.
    """

    term: str
    teacher: str | None = None

    @property
    def every_teacher(self) -> bool:
        return self.teacher == EVERY_TEACHER

    def __str__(self) -> str:
        return self.term if self.teacher is None else f"{self.term}:{self.teacher}"


def parse_objective(text: str, terms: tuple[str, ...] | None = None, separator: str = ":") -> ObjectiveSpec:
    """Parse `term`, or `term<separator>teacher` for a term learnt from teachers.

    Args:
        text: the objective as written.
        terms: the terms allowed where it was written [every registered term].
        separator: what separates the term from the teacher [":"; "." in `--weight` names].
    Raises:
        ValueError: naming `text`, when the term is unknown, the teacher is empty, or a term that
            learns from no teacher names one.
    """
    allowed = terms if terms is not None else term_names()
    name, found, teacher = text.strip().partition(separator)
    if name not in allowed:
        raise ValueError(f"unknown objective {text!r}: the terms are {', '.join(allowed)}")
    if found and not teacher:
        raise ValueError(f"objective {text!r}: name the teacher after {separator!r}, or leave the {separator!r} out")
    if teacher and not names_teacher(name):
        raise ValueError(f"objective {text!r}: {name} learns from no teacher; write {name!r} alone")
    return ObjectiveSpec(name, teacher or None)


def experiment_forms() -> str:
    """The objective strings a study takes, for its error messages."""
    forms = []
    for found in registry.terms():
        if found.in_experiments:
            forms += [f"{found.name}:<teacher>", f"{found.name}:all"] if found.per_teacher else [found.name]
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else forms[0]


def parse_experiment_objective(text: str) -> ObjectiveSpec:
    """An objective of an experiment: a term the study runner trains (`Term.in_experiments`), a
    per-teacher one with its teacher (or `all`).

    A teacher's term it does not train (one not marked `in_experiments`) is refused here with
    that said, before anything runs (`tinystudent train` trains it). The token-level terms
    (`logit_kd`, `onpolicy_kd`, `uld_kd`) name teachers of the study with a local model, several
    joined by `+` (`logit_kd:A+B`); the experiment config checks those teachers.
    """
    head = text.strip().partition(":")[0]
    allowed = term_names("experiment")
    if head in term_names("one_student") and head not in allowed and names_teacher(head):
        raise ValueError(
            f"objective {text!r}: the experiment runner does not train {head} yet; "
            f"use tinystudent train --objective {head}, or one of " + experiment_forms()
        )
    try:
        objective = parse_objective(text, allowed)
    except ValueError as err:
        if head in allowed:
            raise
        raise ValueError(f"unknown objective {text!r}: use {experiment_forms()}") from err
    if registry.term(objective.term).per_teacher and objective.teacher is None:
        raise ValueError(f"objective {text!r} needs a teacher: {objective.term}:<teacher name>")
    return objective


__all__ = [
    "EVERY_TEACHER",
    "ObjectiveSpec",
    "experiment_forms",
    "names_teacher",
    "parse_experiment_objective",
    "parse_objective",
    "term_names",
]
