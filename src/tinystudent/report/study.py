"""The study dict the experiment runner produces: checks it, and answers the questions the report asks.

A study is plain JSON (see `render_report`): `teachers`, `runs`, `verdict`, `comparisons`,
`majority_baseline`, `bpb_correlation`, `search` and the reproducibility fields. Only `teachers`
and `runs` are required; every other key may be missing and its section says so or is left out.
"""

from __future__ import annotations

import math
from typing import Optional

from tinystudent.report.format import is_number

DONE = "done"
COLLABORATION = "collaboration"
TAUGHT = "taught"
UNTRAINED = "untrained"


class StudyError(ValueError):
    """The study dict does not have the shape the report needs."""


def validate_study(study, origin: str = "study") -> dict:
    """Check the parts of `study` the report relies on and return it unchanged.

    Args:
        study: the study dict.
        origin: what to call it in error messages (a file path when it came from one).
    Raises:
        StudyError: naming the record (e.g. `runs[3] 'smollm2-first8 / full'`), what was expected
            and what to do.
    """
    if not isinstance(study, dict):
        raise StudyError(f"{origin}: expected a JSON object (the study), got {type(study).__name__}")
    for key in ("teachers", "runs"):
        if not isinstance(study.get(key), list):
            raise StudyError(
                f"{origin}: '{key}' must be a list; got {study.get(key)!r:.60}. A study "
                "comes from `tinystudent run` (or load_study) and always has teachers and runs"
            )
    for index, teacher in enumerate(study["teachers"]):
        where = f"{origin}: teachers[{index}]"
        _require_mapping(teacher, where)
        _require_text(teacher, "name", where)
        _require_fraction(teacher, "acc", f"{where} '{teacher['name']}'", required=True)
        _require_interval(teacher, f"{where} '{teacher['name']}'")
    for index, run in enumerate(study["runs"]):
        where = f"{origin}: runs[{index}]"
        _require_mapping(run, where)
        _require_text(run, "label", where)
        where = f"{where} '{run['label']}'"
        _require_fraction(run, "acc", where, required=run.get("status", DONE) == DONE)
        _require_interval(run, where)
    _require_fraction(study, "majority_baseline", origin, required=False)
    for key in ("verdict",):
        if study.get(key) is not None and not isinstance(study[key], list):
            raise StudyError(f"{origin}: '{key}' must be a list of entries, got {type(study[key]).__name__}")
    for index, entry in enumerate(study.get("verdict") or []):
        _require_mapping(entry, f"{origin}: verdict[{index}]")
        _require_text(entry, "teacher", f"{origin}: verdict[{index}]")
    _validate_comparisons(study.get("comparisons"), origin)
    return study


def _validate_comparisons(comparisons, origin: str) -> None:
    """`comparisons` maps a name to groups, each `{..., "rows": [{..., "acc", "ci95"}]}`."""
    if comparisons is None:
        return
    if not isinstance(comparisons, dict):
        raise StudyError(f"{origin}: 'comparisons' must be an object of named lists, got {type(comparisons).__name__}")
    for name, groups in comparisons.items():
        if groups is None:
            continue
        if not isinstance(groups, list):
            raise StudyError(f"{origin}: comparisons.{name} must be a list of groups, got {type(groups).__name__}")
        for index, group in enumerate(groups):
            where = f"{origin}: comparisons.{name}[{index}]"
            _require_mapping(group, where)
            if not isinstance(group.get("rows"), list):
                raise StudyError(f"{where}: 'rows' must be a list of {{objective or method, acc, ci95}} rows")
            for row_index, row in enumerate(group["rows"]):
                _require_mapping(row, f"{where}.rows[{row_index}]")
                _require_fraction(row, "acc", f"{where}.rows[{row_index}]", required=False)


def _require_mapping(record, where: str) -> None:
    if not isinstance(record, dict):
        raise StudyError(f"{where}: expected an object, got {type(record).__name__} {record!r:.60}")


def _require_text(record: dict, key: str, where: str) -> None:
    if not isinstance(record.get(key), str) or not record[key].strip():
        raise StudyError(f"{where}: '{key}' must be a non-empty string, got {record.get(key)!r:.60}")


def _require_fraction(record: dict, key: str, where: str, required: bool) -> None:
    value = record.get(key)
    if value is None and not required:
        return
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise StudyError(
            f"{where}: '{key}' must be a fraction between 0 and 1 (0.41 for 41%), got "
            f"{value!r:.60}; regenerate the study with `tinystudent run` or fix that record"
        )


def _require_interval(record: dict, where: str) -> None:
    interval = record.get("ci95")
    if interval is None:
        return
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2 and all(map(is_number, interval))):
        raise StudyError(f"{where}: 'ci95' must be null or [low, high] as fractions, got {interval!r:.60}")


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
    from tinystudent.evaluation.stats import pearson as numeric_pearson

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
