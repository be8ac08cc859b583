"""The study dict the experiment runner produces: checks it, and answers the questions the report asks.

A study is plain JSON (see `render_report`), the `to_dict()` of a `tinystudent.results.Study`:
`teachers`, `runs`, `verdict`, `comparisons`, `majority_baseline`, `bpb_correlation`, `search` and
the reproducibility fields. Only `teachers` and `runs` are required; every other key may be
missing and its section says so or is left out.
"""

from __future__ import annotations

import math
from typing import Optional

from tinystudent.evaluation.stats import pearson as numeric_pearson
from tinystudent.report.format import is_number
from tinystudent.results import DONE, Study, StudyError

COLLABORATION = "collaboration"
TAUGHT = "taught"
UNTRAINED = "untrained"


def validate_study(study, origin: str = "study") -> dict:
    """Check the parts of `study` the report relies on and return it unchanged.

    The check is reading it as a `Study` (`tinystudent.results`), the record the runner makes.

    Args:
        study: the study dict.
        origin: what to call it in error messages (a file path when it came from one).
    Raises:
        StudyError: naming the record (e.g. `runs[3] 'smollm2-first8 / full'`), what was expected
            and what to do.
    """
    Study.from_dict(study, origin)
    return study


def is_measured(teacher: dict) -> bool:
    """A teacher is measured unless it says otherwise or only carries a source for its number."""
    measured = teacher.get("measured")
    return bool(measured) if measured is not None else not teacher.get("source")


def teachers_by_name(study: dict) -> dict[str, dict]:
    return {teacher["name"]: teacher for teacher in study["teachers"]}


def finished_runs(study: dict) -> list[dict]:
    """Runs that finished with an accuracy (failed or pending runs appear only in the runs table)."""
    return [run for run in study["runs"] if run.get("status", DONE) == DONE and is_number(run.get("acc"))]


def runs_in_group(study: dict, group: str) -> list[dict]:
    return [run for run in finished_runs(study) if run.get("group", TAUGHT) == group]


def best_run(runs: list[dict]) -> Optional[dict]:
    """Highest accuracy; among equals the cheapest in parameters, then in memory. Runs measured
    on fewer questions than the others (a debate on the first N) are left out while any run
    measured on all of them exists: accuracies on different questions do not compare."""
    if not runs:
        return None
    sizes = [run["n"] for run in runs if is_number(run.get("n"))]
    if sizes:
        runs = [run for run in runs if not is_number(run.get("n")) or run["n"] == max(sizes)]
    return min(runs, key=lambda run: (-run["acc"], _cost(run, "params"), _cost(run, "peak_memory_mb")))


def pareto_frontier(runs: list[dict], cost_key: str = "params") -> list[dict]:
    """Runs no other run beats on both cost and accuracy, cheapest first.

    Walking runs from cheapest to dearest, a run joins the frontier when it is more accurate than
    every cheaper one (at equal cost only the most accurate counts).
    """
    costed = sorted((run for run in runs if is_number(run.get(cost_key))), key=lambda run: (run[cost_key], -run["acc"]))
    frontier, best_so_far = [], -math.inf
    for run in costed:
        if run["acc"] > best_so_far:
            frontier.append(run)
            best_so_far = run["acc"]
    return frontier


def pearson(xs: list, ys: list) -> Optional[float]:
    """Pearson correlation over the pairs where both values are numbers (see `evaluation.stats`)."""

    pairs = [(x, y) for x, y in zip(xs, ys) if is_number(x) and is_number(y)]
    return numeric_pearson([x for x, _ in pairs], [y for _, y in pairs])


def bpb_correlations(study: dict) -> dict:
    """The study's correlations, computed from the runs where the runner left them out."""
    given = study.get("bpb_correlation") or {}
    runs = [run for run in finished_runs(study) if is_number(run.get("bits_per_byte"))]
    accs = [run["acc"] for run in runs]
    computed = {
        "acc_vs_bpb_pearson": pearson([run["bits_per_byte"] for run in runs], accs),
        "acc_vs_log_params_pearson": pearson(
            [math.log10(run["params"]) if is_number(run.get("params")) and run["params"] > 0 else None for run in runs],
            accs,
        ),
    }
    return {key: given[key] if key in given else value for key, value in computed.items()}


def _cost(run: dict, key: str) -> float:
    value = run.get(key)
    return value if is_number(value) else math.inf


__all__ = [
    "COLLABORATION",
    "DONE",
    "TAUGHT",
    "UNTRAINED",
    "StudyError",
    "best_run",
    "bpb_correlations",
    "finished_runs",
    "is_measured",
    "pareto_frontier",
    "pearson",
    "runs_in_group",
    "teachers_by_name",
    "validate_study",
]
