"""What a plan is made of: the `Plan` the stages write, and what the run has found so far
(`Known`, with each evaluation's `Answers`).

The planner that fills a `Plan` is `experiments.plan`; the stages (`experiments.stages`) add its
units, and the runner and the executors hand `Known` to them. This module imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.units import UnitSpec

if TYPE_CHECKING:
    from tinystudent.experiments.search import SearchReport


@dataclass
class Answers:
    """Which test questions an evaluation answered right: by `acc` (the highest score) and by
    `acc_norm` (the highest score per character)."""

    ids: list[str]
    correct: list[bool]
    correct_norm: list[bool]

    def by(self, metric: str = "acc") -> list[bool]:
        return self.correct_norm if metric == "acc_norm" else self.correct


@dataclass
class Known:
    """What the run has found so far, all the plan needs besides the config and the questions.

    Attributes:
        results: unit key -> the unit's result (computed now or read back from the store).
        rationales: key of a teach or import unit -> the rationales it gave for the training
            questions (question id -> text).
        answers: evaluation id -> which questions it answered right.
        comparisons: a cache of paired comparisons the search made (a pure function of answers).
    """

    results: dict[str, dict] = field(default_factory=dict)
    rationales: dict[str, dict[str, str]] = field(default_factory=dict)
    answers: dict[int, Answers] = field(default_factory=dict)
    comparisons: dict[tuple, dict] = field(default_factory=dict)


class Plan:
    """A plan being written by the stages, and what they found on the way.

    Attributes:
        units: the units in the order they run, each once.
        students: student name -> its `student` unit (once it can be named).
        taught: student name -> its training units, or None while some cannot be named yet.
        search: (the loss-guided search's report, the teacher it had to beat) once it is settled.
        notes: what was left out and why (an encoder asked for rationales), for the log.
    """

    def __init__(self, experiment: Experiment, data: StudyData, known: Known):
        self.experiment, self.data, self.known = experiment, data, known
        self.base = {"task": experiment.task.payload(), "data": data.hashes}
        self.units: list[UnitSpec] = []
        self.keys: set[str] = set()
        self.students: dict[str, UnitSpec] = {}
        self.taught: dict[str, list[UnitSpec] | None] = {}
        self.search: tuple[SearchReport, str] | None = None
        self.notes: list[str] = []

    def add(self, unit: UnitSpec) -> UnitSpec:
        """Append `unit` unless it is already planned; the units it needs must be planned before it."""
        missing = [key for key in unit.needs if key not in self.keys]
        if missing:
            raise AssertionError(f"{unit.name} needs {missing}, which are not planned before it")
        if unit.key not in self.keys:
            self.units.append(unit)
            self.keys.add(unit.key)
        return unit

    def result(self, unit: UnitSpec | None) -> dict | None:
        """The unit's result, when it has run."""
        return None if unit is None else self.known.results.get(unit.key)

    def done(self, unit: UnitSpec) -> dict:
        """The result of a unit that has run (a KeyError for one that has not)."""
        return self.known.results[unit.key]

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


__all__ = ["Answers", "Known", "Plan"]
