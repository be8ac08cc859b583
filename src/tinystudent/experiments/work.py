"""What each kind of unit does, and what the run keeps of its result.

`WORK` maps a unit's kind to the stage function that computes it (of a `StageContext` and the
unit); the runner calls it here, a pool's worker calls it elsewhere. `learn` keeps what later
units and the study need of a finished unit's result in `Known`; the runner and `run --plan`'s
replay of a database (`preview`) both learn through it.
"""

from __future__ import annotations

from tinystudent.experiments.data import StudyData
from tinystudent.experiments.plan_model import Known
from tinystudent.experiments.stages import collaboration, students, teachers, training
from tinystudent.experiments.stored import answers_of
from tinystudent.experiments.units import UnitSpec
from tinystudent.store import Store

WORK = {
    "teacher_eval": teachers.measure,
    "teach": teachers.write_rationales,
    "import": teachers.import_rationales,
    "choice_scores": teachers.score_choices,
    "cut": students.cut,
    "recover": students.recover_student,
    "student": students.prepare,
    "student_eval": students.evaluate_untrained,
    "train": training.train,
    "debate": collaboration.debate,
    "ensemble": collaboration.ensemble,
    "mutual": collaboration.mutual,
    "self_consistency": collaboration.self_consistency,
}


def learn(known: Known, store: Store, data: StudyData, unit: UnitSpec, result: dict) -> None:
    """Keep what later units and the study need of a unit's result: the result itself, the
    rationales a teach or import unit stored, and which questions its evaluations answered right."""
    known.results[unit.key] = result
    if unit.kind in ("teach", "import"):
        known.rationales[unit.key] = teachers.stored_rationales(store, data, unit)
    peers = result.get("peers") or []
    for evaluation_id in [result.get("evaluation_id"), *(p.get("evaluation_id") for p in peers)]:
        if evaluation_id is not None:
            known.answers[evaluation_id] = answers_of(store, evaluation_id)


__all__ = ["WORK", "learn"]
