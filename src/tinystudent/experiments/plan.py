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

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import StudyData, load_study_data
from tinystudent.experiments.plan_model import Known, Plan
from tinystudent.experiments.stages import collaboration, search, students, teachers, training
from tinystudent.experiments.units import UnitSpec


def make_plan(experiment: Experiment, data: StudyData, known: Known | None = None) -> Plan:
    """The plan, with what its stages found (see `plan`)."""
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


__all__ = ["make_plan", "plan"]
