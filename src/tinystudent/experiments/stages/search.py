"""The loss-guided search in a study: train the ladder smallest first, skipping students by bits per
byte, stopping at the first that beats the best teacher (`experiments.search`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.experiments.search import Candidate, loss_guided_search
from tinystudent.experiments.stages.teachers import measurement
from tinystudent.experiments.stages.training import plan_train
from tinystudent.experiments.units import UnitSpec

if TYPE_CHECKING:
    from tinystudent.experiments.plan_model import Plan


class _NotYet(Exception):
    """The search has gone as far as what is known allows."""


def plan_search(plan: Plan) -> None:
    """The search's training units, one candidate at a time; `plan.search` is its report once
    it is settled."""
    spec, teacher = plan.experiment.search, best_teacher(plan)
    names = [s.name for s in plan.experiment.students]
    if spec is None or teacher is None or any(plan.result(plan.students.get(n)) is None for n in names):
        return
    prepared = {n: plan.done(plan.students[n]) for n in names}
    ladder = [
        Candidate(n, p["params"], p["bits_per_byte"]) for n, p in prepared.items() if p.get("bits_per_byte") is not None
    ]

    def train(candidate: Candidate) -> dict:
        student = plan.experiment.student(candidate.name)
        unit = plan_train(plan, student, spec.method, spec.objective, plan.experiment.seeds[0])
        if not isinstance(unit, UnitSpec) or unit.key not in plan.known.results:
            raise _NotYet
        return plan.done(unit)

    def judge(row: dict) -> bool:
        return beats(plan, row, teacher, spec.alpha)

    try:
        report = loss_guided_search(ladder, train, judge, spec.threshold, spec.fit_threshold, spec.margin)
    except _NotYet:
        return
    plan.search = (report, teacher["name"])


def best_teacher(plan: Plan) -> dict | None:
    """The most accurate teacher and its answers (None until every teacher is measured)."""
    measured = [measurement(plan, spec) for spec in plan.experiment.teachers]
    judged = [t for t in measured if t is not None and t.get("acc") is not None]
    if not judged and None not in measured:
        raise ValueError("search: no teacher accuracy to beat")
    if None in measured:
        return None
    best = max(judged, key=lambda t: t["acc"])
    ids, correct = None, None
    if best.get("evaluation_id") is not None:
        answers = plan.known.answers.get(best["evaluation_id"])
        if answers is None:
            return None
        ids, correct = answers.ids, answers.by(best.get("metric", "acc"))
    return {"name": best["name"], "acc": best["acc"], "ids": ids, "correct": correct}


def beats(plan: Plan, row: dict, teacher: dict, alpha: float) -> bool:
    """Whether a trained candidate beats the teacher: higher on the same questions, p below alpha."""
    from tinystudent.experiments.verdict import compare

    answers = plan.known.answers.get(row["evaluation_id"])
    if answers is None:
        raise _NotYet
    memo = (row["evaluation_id"], teacher["name"], teacher["acc"])
    if memo not in plan.known.comparisons:
        candidate = {"label": row["label"], "ids": answers.ids, "correct": answers.correct}
        plan.known.comparisons[memo] = compare(candidate, teacher)
    result = plan.known.comparisons[memo]
    return result["diff"] > 0 and result["p_value"] < alpha


def search_summary(plan: Plan) -> dict | None:
    """What the study says of the search: the report's summary, the teacher, ladder and runs saved."""
    if plan.search is None:
        return None
    report, teacher = plan.search
    summary = report.summary()
    return {**summary, "teacher": teacher, "ladder": summary["ladder_size"], "saved": summary["runs_saved"]}
