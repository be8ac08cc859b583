"""Optional MLflow logging of a study: one MLflow run per study run and per teacher.

Asked for with `mlflow: true` in the experiment (a local file store at
`<results>/<experiment>/mlruns`) or `mlflow: <tracking URI>` (any store MLflow knows, such as
`sqlite:///mlflow.db` or a tracking server). Logging happens after the study is assembled, from
the numbers in the results database, and is idempotent: a run already logged (same run key) is not
logged again, so a resumed experiment adds only what is new.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tinystudent.report.format import is_number

RUN_KEY_TAG = "tinystudent.run_key"
METRICS = (
    "acc",
    "acc_norm",
    "params",
    "peak_memory_mb",
    "latency_ms_p50",
    "questions_per_s",
    "bits_per_byte",
    "train_seconds",
    "valid_acc",
    "n",
)
PARAMS = ("student", "method", "objective", "seed", "group")


def mlflow_available() -> bool:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def tracking_uri(setting: bool | str, out_dir: Path) -> str:
    """`true` -> a file store in the experiment's folder; a string is used as given."""
    if isinstance(setting, str):
        return setting
    return (Path(out_dir) / "mlruns").resolve().as_uri()


def log_study(study: dict, experiment: str, uri: str) -> int:
    """Log every teacher and run of `study` not logged before; returns how many were logged."""
    if uri.startswith("file:"):  # MLflow 3 keeps its file store only on request
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    logged = {run.data.tags.get(RUN_KEY_TAG) for run in client.search_runs([experiment_id], max_results=50_000)}
    now = int(time.time() * 1000)
    count = 0
    for record in _records(study):
        if record["key"] in logged:
            continue
        run = client.create_run(
            experiment_id,
            run_name=record["label"][:250],
            tags={RUN_KEY_TAG: record["key"], "tinystudent.config_hash": str(study.get("config_hash", ""))},
        )
        metrics = [Metric(name, float(record[name]), now, 0) for name in METRICS if is_number(record.get(name))]
        params = [Param(name, str(record[name])[:500]) for name in PARAMS if record.get(name) is not None]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id)
        count += 1
    return count


def _records(study: dict) -> list[dict]:
    teachers = [
        {**t, "key": f"teacher:{t['name']}:{t.get('acc')}", "label": f"teacher {t['name']}", "group": "teacher"}
        for t in study.get("teachers", [])
    ]
    runs = [
        {**r, "key": r.get("run_key") or r["label"]} for r in study.get("runs", []) if r.get("status", "done") == "done"
    ]
    return teachers + runs
