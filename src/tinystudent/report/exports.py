"""Every run as CSV (one row per run, for spreadsheets) and as JSON (lossless, with the teachers)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from tinystudent.folders import refuse_links
from tinystudent.results import Study

RUN_COLUMNS = [
    "run_key",
    "label",
    "student",
    "params",
    "method",
    "objective",
    "seed",
    "group",
    "members",
    "acc",
    "ci95_low",
    "ci95_high",
    "peak_memory_mb",
    "latency_ms_p50",
    "bits_per_byte",
    "train_seconds",
    "status",
]
STUDY_FIELDS = [
    "experiment",
    "task",
    "split",
    "n_test",
    "created",
    "config_hash",
    "data_hash",
    "majority_baseline",
    "versions",
]


def runs_csv(runs: list[dict]) -> str:
    """CSV text of runs as the study stores them (`RunResult.to_dict()`): the standard columns,
    then any other key a run carries (nested values as JSON)."""
    extra = sorted({key for run in runs for key in run} - set(RUN_COLUMNS) - {"ci95"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RUN_COLUMNS + extra, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        interval = run.get("ci95") or [None, None]
        row = {**run, "ci95_low": interval[0], "ci95_high": interval[1], "members": ";".join(run.get("members") or [])}
        row.pop("ci95", None)
        writer.writerow({key: _csv_value(row.get(key)) for key in writer.fieldnames})
    return buffer.getvalue()


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def runs_json(study: Study) -> str:
    """The study's identity, its teachers and every run, exactly as the stored study holds them."""
    stored = study.to_dict()
    payload = {key: stored.get(key) for key in STUDY_FIELDS}
    payload.update(teachers=stored["teachers"], runs=stored["runs"])
    return json.dumps(payload, indent=2, default=str) + "\n"


def write_text(path: Path, text: str) -> Path:
    """Write through a temporary file and rename, so a killed render never leaves half a file."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and rename; refused (`LinkedPathError`) when
    the file, its temporary file or their folder is a symbolic link, which would write elsewhere."""
    partial = path.with_name(path.name + ".partial")
    for written in (path, partial):
        refuse_links(written, path.parent.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data)
    os.replace(partial, path)
    return path
