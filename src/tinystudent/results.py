"""The study as typed records: what `tinystudent run` makes, stores and the report reads.

`Study.to_dict()` is the plain JSON the store holds and the report renders, key for key the shape
studies have always had; `Study.from_dict()` reads it back, old studies included, and is the
report's check of a study (`report.study.validate_study`): a record that lacks what the report
relies on is a `StudyError` naming it. Only `teachers` and `runs` are required; keys this version
does not know are kept as they are (`additional`), so a study round-trips unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, TypeGuard

DONE = "done"


class StudyError(ValueError):
    """The study dict does not have the shape the report needs."""


def is_number(value) -> TypeGuard[float]:
    """A real number: an int or float that is not a bool and not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_mapping(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise StudyError(f"{where}: expected an object, got {type(record).__name__} {record!r:.60}")
    return record


def _require_text(record: dict, key: str, where: str) -> str:
    if not isinstance(record.get(key), str) or not record[key].strip():
        raise StudyError(f"{where}: '{key}' must be a non-empty string, got {record.get(key)!r:.60}")
    return record[key]


def _require_fraction(record: dict, key: str, where: str, required: bool):
    value = record.get(key)
    if value is None and not required:
        return None
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise StudyError(
            f"{where}: '{key}' must be a fraction between 0 and 1 (0.41 for 41%), got "
            f"{value!r:.60}; regenerate the study with `tinystudent run` or fix that record"
        )
    return value


def _require_interval(record: dict, where: str):
    interval = record.get("ci95")
    if interval is None:
        return None
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2 and all(map(is_number, interval))):
        raise StudyError(f"{where}: 'ci95' must be null or [low, high] as fractions, got {interval!r:.60}")
    return interval


def _known_and_additional(cls, data: dict) -> tuple[dict, dict]:
    """`data` split into the record's own fields and the keys it does not know."""
    names = {f.name for f in fields(cls)} - {"additional"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


@dataclass(kw_only=True)
class TeacherResult:
    """A teacher as the study lists it: its test accuracy in its best way of being scored (chosen
    on validation), or the accuracy a paper reported for it; None for a teacher that only gave
    rationales (an import without a reported accuracy), which the verdict does not judge."""

    name: str
    acc: float | None
    ci95: list[float] | None = None
    scoring: str | None = None
    validation: list[dict] = field(default_factory=list)
    params: int | None = None
    peak_memory_mb: float | None = None
    latency_ms_p50: float | None = None
    measured: bool | None = None  # None: not said (then a teacher with a source counts as reported)
    source: str | None = None
    additional: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "additional"}
        return {**own, **self.additional}

    @classmethod
    def from_dict(cls, data, where: str = "teacher") -> TeacherResult:
        _require_mapping(data, where)
        name = _require_text(data, "name", where)
        _require_fraction(data, "acc", f"{where} '{name}'", required=False)
        _require_interval(data, f"{where} '{name}'")
        known, additional = _known_and_additional(cls, data)
        return cls(**{**known, "validation": known.get("validation") or []}, additional=additional)


@dataclass(kw_only=True)
class RunResult:
    """One row of the study's runs: a student trained, untrained or working in a group, measured
    on the test split. `vs_teachers` (student minus teacher and the one-sided p, per teacher) is
    there when its answers could be paired with the teachers'."""

    run_key: str | None = None
    label: str
    student: str | None = None
    params: int | None = None
    method: str | None = None
    objective: str | None = None
    seed: int | None = None
    group: str | None = None
    members: list[str] | None = None
    acc: float | None = None
    acc_norm: float | None = None
    ci95: list[float] | None = None
    n: int | None = None
    peak_memory_mb: float | None = None
    latency_ms_p50: float | None = None
    questions_per_s: float | None = None
    bits_per_byte: float | None = None
    train_seconds: float | None = None
    evaluation_id: int | None = None
    status: str = DONE
    truncated: int | None = None
    valid_acc: float | None = None
    vs_teachers: dict[str, dict] | None = None
    additional: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_unit(cls, run: dict) -> RunResult:
        """The row of a unit's result (a training run, an untrained student, a group)."""
        train = run.get("train") or {}
        own: dict[str, Any] = {
            f.name: run.get(f.name) for f in fields(cls) if f.name not in ("additional", "vs_teachers")
        }
        own["status"] = run.get("status", DONE)
        own["train_seconds"] = run.get("train_seconds") or train.get("train_seconds")
        own["valid_acc"] = train.get("valid_acc")
        return cls(**own)

    def to_dict(self) -> dict:
        skip = {"additional"} | ({"vs_teachers"} if self.vs_teachers is None else set())
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return {**own, **self.additional}

    @classmethod
    def from_dict(cls, data, where: str = "run") -> RunResult:
        _require_mapping(data, where)
        where = f"{where} '{_require_text(data, 'label', where)}'"
        _require_fraction(data, "acc", where, required=data.get("status", DONE) == DONE)
        _require_interval(data, where)
        known, additional = _known_and_additional(cls, data)
        values: dict[str, Any] = {**known, "status": data.get("status", DONE)}
        return cls(**values, additional=additional)


@dataclass(kw_only=True)
class StudentResult:
    """A student as prepared: how it was cut, its size, bits per byte on held-out text, and its
    recovery (the cut model's bits per byte before and after distillation from its parent)."""

    name: str
    cut: str | None = None
    kind: str | None = None
    params: int | None = None
    bits_per_byte: float | None = None
    recovered: bool = False
    bits_per_byte_before_recovery: float | None = None
    bits_per_byte_after_recovery: float | None = None
    recovery_steps: int | None = None
    recovery_tokens: int | None = None
    recovery_seconds: float | None = None
    additional: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "additional"}
        return {**own, **self.additional}

    @classmethod
    def from_dict(cls, data, where: str = "student") -> StudentResult:
        _require_mapping(data, where)
        _require_text(data, "name", where)
        known, additional = _known_and_additional(cls, data)
        return cls(**known, additional=additional)


STUDY_KEYS = (
    "experiment",
    "task",
    "split",
    "n_test",
    "created",
    "config",
    "config_hash",
    "data_hash",
    "data_origin",
    "versions",
    "majority_baseline",
)


@dataclass(kw_only=True)
class Study:
    """The whole study: teachers, students, every run, the verdict and what it was made from.

    Verdict entries (`experiments.verdict.smallest_winner`), comparisons, correlations, unit
    counts and the search summary stay plain dicts: the report reads them by key."""

    teachers: list[TeacherResult]
    runs: list[RunResult]
    experiment: str | None = None
    task: str | None = None
    split: str | None = None
    n_test: int | None = None
    created: str | None = None
    config: dict | None = None
    config_hash: str | None = None
    data_hash: str | None = None
    data_origin: dict | None = None
    versions: dict | None = None
    majority_baseline: float | None = None
    students: list[StudentResult] = field(default_factory=list)
    verdict: list[dict] = field(default_factory=list)
    comparisons: dict | None = None
    bpb_correlation: dict | None = None
    units: dict | None = None
    search: dict | None = None
    contamination: dict | None = None  # training and validation questions compared with the test ones
    recipes: list[dict] = field(default_factory=list)  # each recipe over its seeds (`study.recipes`)
    baselines: dict | None = None  # majority, and the best student taught by gold answers alone
    additional: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The study as the store and the report hold it, keys in the order they always had."""
        head = {key: getattr(self, key) for key in STUDY_KEYS}
        return {
            **head,
            "teachers": [t.to_dict() for t in self.teachers],
            "students": [s.to_dict() for s in self.students],
            "runs": [r.to_dict() for r in self.runs],
            "verdict": self.verdict,
            "comparisons": self.comparisons,
            "bpb_correlation": self.bpb_correlation,
            "units": self.units,
            "search": self.search,
            "contamination": self.contamination,
            "recipes": self.recipes,
            "baselines": self.baselines,
            **self.additional,
        }

    @classmethod
    def from_dict(cls, data, origin: str = "study") -> Study:
        """Read a study dict back, checking what the report relies on.

        Args:
            data: the study dict (from the store, a study file or `to_dict`).
            origin: what to call it in error messages (a file path when it came from one).
        Raises:
            StudyError: naming the record (e.g. `runs[3] 'smollm2-first8 / full'`), what was
                expected and what to do.
        """
        if not isinstance(data, dict):
            raise StudyError(f"{origin}: expected a JSON object (the study), got {type(data).__name__}")
        for key in ("teachers", "runs"):
            if not isinstance(data.get(key), list):
                raise StudyError(
                    f"{origin}: '{key}' must be a list; got {data.get(key)!r:.60}. A study "
                    "comes from `tinystudent run` (or load_study) and always has teachers and runs"
                )
        teachers = [TeacherResult.from_dict(t, f"{origin}: teachers[{i}]") for i, t in enumerate(data["teachers"])]
        runs = [RunResult.from_dict(r, f"{origin}: runs[{i}]") for i, r in enumerate(data["runs"])]
        students = [
            StudentResult.from_dict(s, f"{origin}: students[{i}]") for i, s in enumerate(data.get("students") or [])
        ]
        _require_fraction(data, "majority_baseline", origin, required=False)
        verdict = _verdict_entries(data.get("verdict"), origin)
        _check_comparisons(data.get("comparisons"), origin)
        known, additional = _known_and_additional(cls, data)
        parts = {"teachers": teachers, "runs": runs, "students": students, "verdict": verdict}
        return cls(**{**known, **parts}, additional=additional)


def _verdict_entries(entries, origin: str) -> list[dict]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise StudyError(f"{origin}: 'verdict' must be a list of entries, got {type(entries).__name__}")
    for index, entry in enumerate(entries):
        _require_mapping(entry, f"{origin}: verdict[{index}]")
        _require_text(entry, "teacher", f"{origin}: verdict[{index}]")
    return entries


def _check_comparisons(comparisons, origin: str) -> None:
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


__all__ = ["DONE", "RunResult", "StudentResult", "Study", "StudyError", "TeacherResult", "is_number"]
