"""The executors: one quickstart-shaped study run locally (one unit at a time), with `--jobs 2`,
on a local Ray cluster and through submitit's local executor, which all give the same verdict and
the same stored predictions; workers killed or preempted mid-unit; units never computed twice;
the results a worker elsewhere hands back, recorded in the results database."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from test_experiments import done_units, processes_with_parent, run_cli, verdict_numbers, write_toy_task

from tinystudent.evaluation.evaluate import EvalResult, Prediction
from tinystudent.experiments.executors.unit_store import (
    create_unit_store,
    import_rows,
    renumber,
    seed_rows,
    written_rows,
)
from tinystudent.store import Store
from tinystudent.teachers import cache
from tinystudent.teachers.base import TeacherOutput

STUDY = """
name: jobs
task: {{name: {task}, train_limit: 12, valid_limit: 4, test_limit: 8}}
teachers:
  - {{name: teach, model: {model}, max_new_tokens: 8, k_shots: 0}}
students:
  - {{name: small, model: {model}, keep_layers: "first:1"}}
  - {{name: whole, model: {model}}}
methods: {{finetune: [full], objectives: [answer]}}
training: {{steps: 2, batch_size: 4, eval_before: false}}
eval_batch_size: 8
"""


def stored_predictions(db) -> dict:
    """Each unit's evaluation: question id -> the choice it picked."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT e.run_key, p.example_id, p.pred FROM predictions p JOIN evaluations e ON e.id = p.evaluation_id"
        ).fetchall()
    found: dict = {}
    for run_key, example_id, pred in rows:
        found.setdefault(run_key, {})[example_id] = pred
    return found


def unit_spans(db) -> list[tuple[float, float]]:
    """When each computed unit started and ended."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT created, result FROM runs WHERE status = 'done' AND kind != 'study'").fetchall()
    return [(created, created + json.loads(result)["seconds"]) for created, result in rows]


def table_counts(db) -> dict:
    with sqlite3.connect(db) as conn:
        return {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("evaluations", "predictions", "teacher_outputs", "model_losses", "runs")
        }


def run_study(folder: Path, name: str, *args: str, **kwargs):
    """Start the study with results in `folder/name` and `folder/name.sqlite`."""
    config = folder / "jobs.yaml"
    return run_cli([str(config), "--db", str(folder / f"{name}.sqlite"), "--out", str(folder / name), "--json", *args],
                   **kwargs)  # fmt: skip


def finish(run, timeout: int = 900) -> tuple[dict, str]:
    stdout, stderr = run.communicate(timeout=timeout)
    assert run.returncode == 0, stderr[-3000:]
    return json.loads(stdout), stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_causal):
    """The study run locally, one unit at a time: (folder, its result, its database, seconds)."""
    folder = tmp_path_factory.mktemp("executors")
    task = write_toy_task(folder)
    (folder / "jobs.yaml").write_text(STUDY.format(task=task, model=tiny_causal))
    started = time.time()
    result, _ = finish(run_study(folder, "local"))
    return folder, result, folder / "local.sqlite", time.time() - started


def same_as_reference(reference, result: dict, db: Path) -> None:
    _, expected, expected_db, _ = reference
    assert verdict_numbers(result) == verdict_numbers(expected)
    assert stored_predictions(db) == stored_predictions(expected_db)
    assert table_counts(db) == table_counts(expected_db)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_jobs_run_units_at_once_and_a_killed_workers_unit_reruns_with_nothing_lost_or_duplicated(reference):
    """`--jobs 2`: two units run at the same time; a worker killed in the middle of a unit (while
    its evaluation runs) is replaced and the unit runs again; the study is the same as one job's."""
    folder = reference[0]
    db = folder / "jobs2.sqlite"
    run = run_study(folder, "jobs2", "--jobs", "2")
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and run.poll() is None:
        workers = [pid for pid, line in processes_with_parent(run.pid).items() if "multiprocessing" in line]
        evaluating = [pid for pid in workers if processes_with_parent(pid)]  # in the middle of a unit
        if evaluating and done_units(db):
            killed = evaluating[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    result, stderr = finish(run)
    assert killed is not None and "died" in stderr and "starting it again" in stderr
    same_as_reference(reference, result, db)
    spans = sorted(unit_spans(db))
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two units ran at once"
    with sqlite3.connect(db) as conn:
        twice = conn.execute(
            "SELECT run_key, COUNT(*) FROM evaluations WHERE run_key IS NOT NULL GROUP BY run_key HAVING COUNT(*) > 1"
        ).fetchall()
    assert twice == []


@pytest.mark.slow
def test_ray_runs_the_study_as_tasks_and_the_driver_records_what_they_return(reference):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'tinystudent[ray]')")
    folder = reference[0]
    result, stderr = finish(run_study(folder, "ray", "--executor", "ray", "executor.ray.num_cpus=2"))
    assert "Ray: " in stderr
    same_as_reference(reference, result, folder / "ray.sqlite")
    units = sorted((folder / "ray" / "units").iterdir())
    assert units and all((unit / "unit.sqlite").exists() for unit in units)  # each task's own database
    assert not list((folder / "ray" / "units").glob("*/*-wal")), "a worker's database used WAL"
    spans = sorted(unit_spans(folder / "ray.sqlite"))
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two tasks ran at once"


def units_under_way(parent: int) -> list[int]:
    """The processes below `parent` running a submitit job that is inside its unit's work (it
    has loaded torch): what SLURM signals before it preempts a job."""
    found, frontier = [], [parent]
    while frontier:
        children = processes_with_parent(frontier.pop())
        for pid, line in children.items():
            try:
                working = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            if "submitit.core._submit" in line and working:
                found.append(pid)
        frontier += list(children)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the jobs")
def test_slurm_jobs_through_submitit_survive_preemption_and_are_never_submitted_twice(reference):
    pytest.importorskip("submitit", reason="the slurm extra is not installed (pip install 'tinystudent[slurm]')")
    folder = reference[0]
    args = ("--executor", "slurm", "executor.slurm.cluster=local", "executor.slurm.poll_seconds=0.5")
    run = run_study(folder, "slurm", *args)
    preempted: list[int] = []
    deadline = time.time() + 300
    while not preempted and time.time() < deadline and run.poll() is None:
        training = list((folder / "slurm" / "logs").glob("train-*.log"))
        if training and done_units(folder / "slurm.sqlite"):  # a training unit is under way
            preempted = units_under_way(run.pid)
            for pid in preempted:  # the signal SLURM sends before it preempts a job
                os.kill(pid, signal.SIGUSR2)
        time.sleep(0.2)
    result, _ = finish(run)
    assert preempted, "no job was running to preempt"
    logs = "".join(p.read_text() for p in (folder / "slurm" / "slurm").glob("*/*_log.*"))
    assert "preempted" in logs and "Requeued job" in logs
    same_as_reference(reference, result, folder / "slurm.sqlite")

    # A new driver on a new database finds every unit's outbox: nothing is submitted again.
    again, stderr = finish(run_study(folder, "slurm", *args, "--db", str(folder / "again.sqlite")))
    assert "submitted" not in stderr
    assert verdict_numbers(again) == verdict_numbers(reference[1])
    assert stored_predictions(folder / "again.sqlite") == stored_predictions(reference[2])


@pytest.mark.parametrize(("executor", "module", "extra"), [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_an_executor_whose_engine_is_missing_says_what_to_install(reference, tmp_path, executor, module, extra):
    folder = reference[0]
    shadow = tmp_path / module
    shadow.mkdir()
    (shadow / "__init__.py").write_text(f'raise ImportError("No module named {module}")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = run_study(folder, f"missing-{executor}", "--executor", executor, env=env)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode != 0 and stdout == ""
    assert f"pip install 'tinystudent[{extra}]'" in stderr and "Traceback" not in stderr


def an_evaluation(model: str, acc: float) -> EvalResult:
    predictions = [Prediction("q1", 0, 0, 0, [-0.1, -2.0]), Prediction("q2", 1, 0, 1, [-0.5, -0.7])]
    return EvalResult(
        model=model,
        task="toy",
        split="test",
        n=2,
        acc=acc,
        acc_norm=acc,
        ci95=[0.0, 1.0],
        majority_baseline=0.5,
        mode="loglikelihood",
        cost={"seconds": 1.0},
        data_hash="abc",
        settings={"model_identity": model},
        predictions=predictions,
    )


def an_output(key: str, text: str) -> TeacherOutput:
    return TeacherOutput(
        teacher="teacher",
        example_id=key,
        strategy="cot",
        text=text,
        answer=0,
        choice_logprobs=None,
        matches_gold=True,
        cache_key=key,
        task="toy",
        meta={},
    )


def test_a_workers_rows_reach_the_results_database_once_with_their_ids_renumbered(tmp_path):
    with Store(tmp_path / "results.sqlite") as results:
        earlier = results.save_evaluation(an_evaluation("other", 0.5), "student:1")
        results.save_evaluation(an_evaluation("killed attempt", 0.0), "train:1")
        cache.save(results, an_output("k1", "cached before"), "prompt")
        cache.save(results, an_output("k2", "cleaned before"), "prompt")
        seed = seed_rows(results, "toy", "teach")
        assert seed_rows(results, "toy", "train")["teacher_outputs"] == []  # it asks no teacher
    assert [r["cache_key"] for r in seed["teacher_outputs"]] == ["k1", "k2"]

    unit_db = tmp_path / "unit" / "unit.sqlite"
    create_unit_store(unit_db, seed)
    with Store(unit_db, journal="delete") as unit:
        assert cache.fetch(unit, ["k1"])["k1"]["text"] == "cached before"  # the worker reuses the cache
        evaluation = unit.save_evaluation(an_evaluation("trained", 1.0), "train:1")
        cache.save(unit, an_output("k3", "new"), "prompt")
        cache.update_text(unit, an_output("k2", "cleaned again"))
        rows = written_rows(unit, seed)
    assert not (tmp_path / "unit" / "unit.sqlite-wal").exists()
    assert [r["cache_key"] for r in rows["teacher_outputs"]] == ["k2", "k3"]  # k1 is unchanged
    rows = json.loads(json.dumps(rows))  # they travel as JSON

    with Store(tmp_path / "results.sqlite") as results:
        ids = import_rows(results, rows)
        assert set(ids) == {evaluation} and ids[evaluation] != earlier
        stored = results.evaluations(run_key="train:1")
        assert [(e["model"], e["acc"]) for e in stored] == [("trained", 1.0)]  # the killed attempt's is gone
        assert [p["pred"] for p in results.predictions(ids[evaluation])] == [0, 0]
        texts = {row["cache_key"]: row["text"] for row in cache.rows_for(results, task="toy")}
        assert texts == {"k1": "cached before", "k2": "cleaned again", "k3": "new"}
    result = {"evaluation_id": evaluation, "db": str(unit_db), "peers": [{"evaluation_id": evaluation, "acc": 1.0}]}
    assert renumber(result, ids, str(unit_db), "results.sqlite") == {
        "evaluation_id": ids[evaluation],
        "db": "results.sqlite",
        "peers": [{"evaluation_id": ids[evaluation], "acc": 1.0}],
    }
