"""The study the report renders: checks it, and answers the questions the report asks.

The report reads a `tinystudent.results.Study`: typed `teachers`, `runs` and `students`, with the
verdict entries, `comparisons`, `bpb_correlation`, `search`, `recipes` and `baselines` as the plain
dicts the runner makes. A study on disk is the JSON of `Study.to_dict()`; `validate_study` reads
it back. Only `teachers` and `runs` are required; every other part may be missing and its section
says so or is left out.
"""

from __future__ import annotations

import math
from typing import Optional

from tinystudent.evaluation.stats import pearson as numeric_pearson
from tinystudent.report.format import is_number
from tinystudent.results import DONE, RunResult, Study, StudyError, TeacherResult

COLLABORATION = "collaboration"
TAUGHT = "taught"
UNTRAINED = "untrained"
COSTS = ("params", "peak_memory_mb")  # what a run's size is measured in


def validate_study(study: dict | Study, origin: str = "study") -> Study:
    """The study as a `Study`, checked for the parts the report relies on.

    Args:
        study: the study dict (a study file, the store, `Study.to_dict()`), or a `Study`, which is
            checked the same way and returned as it is.
        origin: what to call it in error messages (a file path when it came from one).
    Raises:
        StudyError: naming the record (e.g. `runs[3] 'smollm2-first8 / full'`), what was expected
            and what to do.
    """
    if isinstance(study, Study):
        Study.from_dict(study.to_dict(), origin)  # one built in code has not been read, so check it
        return study
    return Study.from_dict(study, origin)


def is_measured(teacher: TeacherResult) -> bool:
    """A teacher is measured unless it says otherwise or only carries a source for its number."""
    return bool(teacher.measured) if teacher.measured is not None else not teacher.source


def teachers_by_name(study: Study) -> dict[str, TeacherResult]:
    return {teacher.name: teacher for teacher in study.teachers}


def group_of(run: RunResult) -> str:
    """The run's group: taught unless it says otherwise."""
    return run.group or TAUGHT


def cost(run: RunResult, key: str):
    """The run's cost in `key` (one of `COSTS`), or None."""
    if key not in COSTS:
        raise KeyError(f"{key!r} is not a cost; the costs are {', '.join(COSTS)}")
    return getattr(run, key)


def finished_runs(study: Study) -> list[RunResult]:
    """Runs that finished with an accuracy (failed or pending runs appear only in the runs table)."""
    return [run for run in study.runs if run.status == DONE and is_number(run.acc)]


def runs_in_group(study: Study, group: str) -> list[RunResult]:
    return [run for run in finished_runs(study) if group_of(run) == group]


def best_run(runs: list[RunResult]) -> Optional[RunResult]:
    """Highest accuracy; among equals the cheapest in parameters, then in memory. Runs measured
    on fewer questions than the others (a debate on the first N) are left out while any run
    measured on all of them exists: accuracies on different questions do not compare."""
    if not runs:
        return None
    sizes = [run.n for run in runs if is_number(run.n)]
    if sizes:
        runs = [run for run in runs if not is_number(run.n) or run.n == max(sizes)]
    return min(runs, key=lambda run: (-_acc(run), _cost(run, "params"), _cost(run, "peak_memory_mb")))


def pareto_frontier(runs: list[RunResult], cost_key: str = "params") -> list[RunResult]:
    """Finished runs no other run beats on both cost and accuracy, cheapest first.

    Walking runs from cheapest to dearest, a run joins the frontier when it is more accurate than
    every cheaper one (at equal cost only the most accurate counts).
    """
    costed = sorted(
        (run for run in runs if is_number(cost(run, cost_key)) and is_number(run.acc)),
        key=lambda run: (cost(run, cost_key), -_acc(run)),
    )
    frontier: list[RunResult] = []
    best_so_far = -math.inf
    for run in costed:
        if _acc(run) > best_so_far:
            frontier.append(run)
            best_so_far = _acc(run)
    return frontier


def pearson(xs: list, ys: list) -> Optional[float]:
    """Pearson correlation over the pairs where both values are numbers (see `evaluation.stats`)."""

    pairs = [(x, y) for x, y in zip(xs, ys) if is_number(x) and is_number(y)]
    return numeric_pearson([x for x, _ in pairs], [y for _, y in pairs])


def bpb_correlations(study: Study) -> dict:
    """The study's correlations, computed from the runs where the runner left them out."""
    given = study.bpb_correlation or {}
    runs = [run for run in finished_runs(study) if is_number(run.bits_per_byte)]
    accs = [run.acc for run in runs]
    computed = {
        "acc_vs_bpb_pearson": pearson([run.bits_per_byte for run in runs], accs),
        "acc_vs_log_params_pearson": pearson(
            [math.log10(run.params) if is_number(run.params) and run.params > 0 else None for run in runs],
            accs,
        ),
    }
    return {key: given[key] if key in given else value for key, value in computed.items()}


def _acc(run: RunResult) -> float:
    """The accuracy of a finished run (the callers keep only runs that have one)."""
    return run.acc if is_number(run.acc) else -math.inf


def _cost(run: RunResult, key: str) -> float:
    value = cost(run, key)
    return value if is_number(value) else math.inf


__all__ = [
    "COLLABORATION",
    "COSTS",
    "DONE",
    "TAUGHT",
    "UNTRAINED",
    "StudyError",
    "best_run",
    "bpb_correlations",
    "cost",
    "finished_runs",
    "group_of",
    "is_measured",
    "pareto_frontier",
    "pearson",
    "runs_in_group",
    "teachers_by_name",
    "validate_study",
]
