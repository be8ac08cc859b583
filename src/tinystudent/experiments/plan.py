"""The plan of a study: every unit `tinystudent run` executes, in order, without running any.

`plan(experiment)` is a pure function: it reads the task's questions (their hashes key every
unit) and loads no model, opens no store and writes nothing. Each unit is a `UnitSpec` whose key
is the one the runner stores its result under, so a plan says which units a database already
holds.

Some units can only be named once earlier ones have run: the teacher's test pass is the way of
scoring it that did best on validation, a cut student's recovery is keyed by the rationales it
recovers on, a training run that asks an encoder for rationales is skipped, ensembles and debates
use each member's best run, and the loss-guided search trains one candidate at a time. So
`plan(experiment, data, known)` lists every unit that can be named from what is `known` so far,
in the order they run; the runner runs the first one not run yet, adds its result to `known` and
plans again, until no unit is left. Given everything a finished run learnt, the plan is the whole
run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import StudyData, load_study_data
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


def make_plan(experiment: Experiment, data: StudyData, known: Known | None = None) -> Plan:
    """The plan, with what its stages found (see `plan`)."""
    from tinystudent.experiments.stages import collaboration, search, students, teachers, training

    written = Plan(experiment, data, known or Known())
    teachers.plan_teachers(written)
    students.plan_students(written)
    if experiment.search:
        search.plan_search(written)
    else:
        training.plan_training(written)
        collaboration.plan_collaboration(written)
    return written


def plan(experiment: Experiment, data: StudyData | None = None, known: Known | None = None) -> list[UnitSpec]:
    """Every unit the run executes, in order, as far as `known` lets it be named.

    Args:
        experiment: the validated experiment.
        data: its questions [read from the task, as the runner does].
        known: what earlier units found [nothing: the plan before anything runs].
    """
    return make_plan(experiment, data or load_study_data(experiment), known).units


__all__ = ["Answers", "Known", "Plan", "make_plan", "plan"]
