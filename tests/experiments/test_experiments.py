"""`tinystudent run` end to end on tiny models: verdict, report, resume after kill -9, shipped configs."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tinystudent.commands.run import EXAMPLES
from tinystudent.experiments.config import load_experiment


def tiny_experiment(tmp_path, teacher, student, encoder, task, extra=""):
    text = (
        f"""
    name: tiny
    task: {{name: {task}, train_limit: 16, valid_limit: 8, test_limit: 12}}
    teachers:
      - {{name: teach, model: {teacher}, max_new_tokens: 12, k_shots: 1}}
    students:
      - {{name: small, model: {student}, keep_layers: "first:1"}}
      - {{name: full, model: {student}}}
      - {{name: enc, model: {encoder}}}
    methods: {{finetune: [full, lora], objectives: [answer, "rationale:teach"]}}
    training: {{steps: 2, batch_size: 4, max_rationale_tokens: 16, eval_before: false}}
    eval_batch_size: 8
    """
        + extra
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def write_toy_task(folder):
    """Sixty yes/no questions about even numbers, as a JSONL task file in `folder`."""
    rows = [
        {
            "id": f"q{i}",
            "question": f"Is {i} an even number?",
            "choices": ["yes", "no"],
            "answer": "yes" if i % 2 == 0 else "no",
        }
        for i in range(60)
    ]
    path = folder / "toy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture()
def toy_task(tmp_path):
    return write_toy_task(tmp_path)


def run_cli(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "tinystudent", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def done_units(db):
    with sqlite3.connect(db) as conn:
        return {
            key: created
            for key, created in conn.execute(
                "SELECT run_key, created FROM runs WHERE status = 'done' AND kind != 'study'"
            )
        }


@pytest.mark.slow
def test_run_kill_and_resume(tmp_path, tiny_causal, tiny_encoder, toy_task):
    config = tiny_experiment(
        tmp_path,
        tiny_causal,
        tiny_causal,
        tiny_encoder,
        toy_task,
        "collaboration: {members: [small, full], ensemble: true, debate_rounds: 2, "
        "debate_limit: 4, mutual_learning: true}\n",
    )
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = [str(config), "--db", str(db), "--out", str(out), "--json"]
    first = run_cli(args)
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if db.exists() and sum(k.startswith("train:") for k in done_units(db)) >= 2:
            break
        time.sleep(0.5)
    assert first.poll() is None, first.communicate()[1][-2000:]
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = done_units(db)
    second = run_cli(args)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-3000:]
    result = json.loads(stdout)
    after = done_units(db)
    assert all(after[key] == created for key, created in before.items())  # nothing redone
    counts = re.search(r"units computed (\d+), read back (\d+)", stderr)
    assert counts, stderr[-2000:]
    # the two training runs finished before the kill are read back, and what was left is computed
    assert int(counts[2]) >= 2 and int(counts[1]) >= 1
    objectives = {(r["student"], r["method"], r["objective"]) for r in result["runs"]}
    assert ("small", "lora", "rationale:teach") in objectives and ("enc", "full", "answer") in objectives
    assert ("enc", "full", "rationale:teach") in objectives  # an encoder reads the rationales it cannot write
    groups = {r["objective"] for r in result["runs"] if r["group"] == "collaboration"}
    assert {"ensemble:avg", "ensemble:vote", "debate", "mutual"} <= groups
    for entry in result["verdict"]:
        assert entry["teacher"] == "teach" and (entry["smallest_winner"] or entry["closest"])
        assert {"teacher_acc", "winner_acc", "diff_ci95", "p_value"} <= set(entry)
    assert os.path.exists(result["report"])
    markdown = open(result["report_markdown"]).read()
    assert markdown.index("Verdict") < markdown.index("Learning from vs working with")
    # a third run with nothing changed computes nothing; without --json the verdict is on stdout
    third = run_cli(args[:-1])
    stdout, stderr = third.communicate(timeout=300)
    assert third.returncode == 0 and "units computed 0" in stderr
    assert "Verdict" in stdout and f"report: {out / 'report'}" in stdout and "units computed" not in stdout


def test_changed_config_reruns_only_what_depends_on_it(tmp_path):
    from tinystudent.experiments.units import UnitRunner
    from tinystudent.store import Store

    calls = []
    with Store(tmp_path / "r.sqlite") as store:
        units = UnitRunner(store, "x", tmp_path / "logs")
        for steps in (2, 2, 3):
            units.run("teacher_eval", "teacher", {"teacher": "t"}, lambda: calls.append("t") or {"acc": 0.5})
            units.run("train", "student", {"steps": steps}, lambda: calls.append("s") or {"acc": 0.6})
        assert calls == ["t", "s", "s"]
        # what this runner computed and then used again is not "read back" from an earlier run
        assert len(units.done) == 3 and units.skipped == []
        again = UnitRunner(store, "x", tmp_path / "logs")
        again.run("teacher_eval", "teacher", {"teacher": "t"}, lambda: calls.append("t") or {"acc": 0.5})
        assert again.skipped == ["teacher"] and again.done == [] and calls == ["t", "s", "s"]


def test_failed_unit_is_recorded_and_retried(tmp_path):
    from tinystudent.experiments.units import UnitRunner
    from tinystudent.store import Store

    with Store(tmp_path / "r.sqlite") as store:
        units = UnitRunner(store, "x", tmp_path / "logs")
        with pytest.raises(ZeroDivisionError):
            units.run("train", "s", {"a": 1}, lambda: {"x": 1 / 0})
        assert store.run(units.key("train", {"a": 1}))["status"] == "failed"
        assert units.run("train", "s", {"a": 1}, lambda: {"x": 1})["x"] == 1


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
def test_shipped_experiments_validate(name, shared_dir, monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)  # shipped examples name ../shared relative to the checkout
    experiment = load_experiment(EXAMPLES / f"{name}.yaml")
    assert experiment.name == name and experiment.students


@pytest.mark.slow
def test_tinyllm_bioasq_with_both_imported_teachers(tmp_path, shared_dir, tiny_causal):
    from tinystudent.experiments.runner import run_experiment
    from tinystudent.store import Store

    folder = shared_dir / "data" / "tinyllm" / "bioasq"
    text = f"""
    name: tiny-bioasq
    task: {{name: {folder}, train_limit: 12, valid_limit: 6, test_limit: 10}}
    teachers:
      - {{name: flan, backend: imported, reported_acc: 0.6585, reported_source: "TinyLLM Table 2",
          rationales: {{format: tinyllm, path: {folder}, teacher: flan-t5-xl}}}}
      - {{name: llama, backend: imported, reported_acc: 0.7375, reported_source: "TinyLLM Table 2",
          rationales: {{format: tinyllm, path: {folder}, teacher: llama-2-chat-7b}}}}
    students:
      - {{name: s1, model: {tiny_causal}, keep_layers: "first:1"}}
      - {{name: s2, model: {tiny_causal}}}
    methods: {{finetune: [full], objectives: ["rationale:all"]}}
    training: {{steps: 2, batch_size: 4, max_rationale_tokens: 16, max_input_tokens: 96, eval_before: false}}
    measure_bits_per_byte: false
    """
    path = tmp_path / "b.yaml"
    path.write_text(textwrap.dedent(text))
    with Store(tmp_path / "r.sqlite") as store:
        study = run_experiment(load_experiment(path), store, tmp_path / "out")
    assert [t["measured"] for t in study["teachers"]] == [False, False]
    taught = [r for r in study["runs"] if r["group"] == "taught"]
    assert len(taught) == 2 and all(0 <= r["acc"] <= 1 for r in taught)
    assert {v["teacher"] for v in study["verdict"]} == {"flan", "llama"}
    assert all(v["teacher_measured"] is False for v in study["verdict"])


@pytest.mark.slow
def test_loss_guided_search_in_an_experiment(tmp_path, tiny_causal, tiny_encoder, toy_task):
    from tinystudent.experiments.runner import run_experiment
    from tinystudent.store import Store

    config = tiny_experiment(
        tmp_path,
        tiny_causal,
        tiny_causal,
        tiny_encoder,
        toy_task,
        "search: {objective: answer, method: full, threshold: 100.0}\n    mlflow: true\n",
    )
    with Store(tmp_path / "r.sqlite") as store:
        study = run_experiment(load_experiment(config), store, tmp_path / "out")
        again = run_experiment(load_experiment(config), store, tmp_path / "out")
    assert again["runs"] == study["runs"]
    logged = _mlflow_runs((tmp_path / "out" / "mlruns").as_uri(), "tiny")
    finished = [r for r in study["runs"] if r.get("status", "done") == "done"]
    assert len(logged) == len(finished) + len(study["teachers"])  # the rerun logged nothing twice
    by_key = {run.data.tags["tinystudent.run_key"]: run.data.metrics for run in logged}
    assert all(by_key[r["run_key"]]["acc"] == pytest.approx(r["acc"]) for r in finished)
    search = study["search"]
    # the encoder has no bits per byte, so the ladder is the two causal students, smallest first
    assert search["ladder"] == 2 and [s["name"] for s in search["steps"]] == ["small", "full"]
    assert search["trained"] + search["skipped"] + search["not_needed"] == 2
    assert search["saved"] == 2 - search["trained"]
    taught = [r for r in study["runs"] if r["group"] == "taught"]
    assert len(taught) == search["trained"]


def _mlflow_runs(uri: str, experiment: str):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_mlflow_asked_for_but_missing_is_a_clear_error(tmp_path, tiny_causal, tiny_encoder, toy_task, monkeypatch):
    from tinystudent.experiments import tracking
    from tinystudent.experiments.config import ExperimentError

    monkeypatch.setattr(tracking, "mlflow_available", lambda: False)
    config = tiny_experiment(tmp_path, tiny_causal, tiny_causal, tiny_encoder, toy_task, "mlflow: true\n")
    with pytest.raises(ExperimentError, match="mlflow: logging to MLflow was asked for.*pip install mlflow"):
        load_experiment(config)


def test_a_teacher_folder_is_found_beside_the_study_and_a_missing_one_is_named(tmp_path, monkeypatch):
    """A local teacher's `model:` that names a folder relative to the study file resolves against
    that file's folder, like a student's, from any working folder; a `./` folder that is not there
    is refused with its key."""
    from tinystudent.experiments.config import ExperimentError

    study = tmp_path / "study"
    (study / "models" / "teach").mkdir(parents=True)
    task = write_toy_task(study)
    text = f"""
    name: rel
    task: {{name: {task.name}}}
    teachers:
      - {{name: teach, model: ./models/teach}}
    students:
      - {{name: s, model: ./models/teach}}
    """
    path = study / "rel.yaml"
    path.write_text(textwrap.dedent(text))
    monkeypatch.chdir(tmp_path)  # not the study's folder
    experiment = load_experiment(path)
    assert experiment.teacher("teach").model == str(study / "models" / "teach")
    path.write_text(textwrap.dedent(text).replace("teach, model: ./models/teach", "teach, model: ./models/gone"))
    with pytest.raises(ExperimentError, match=r"teachers\.0\.model: .*models/gone does not exist"):
        load_experiment(path)


def processes_using(path) -> dict[int, str]:
    """Live processes that name `path` on their command line or hold a file under it open, by pid
    (an evaluation child, spawned by multiprocessing, names nothing of ours on its command line but
    holds its database and its log open)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{entry}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                held = open_files(entry)
            except OSError:
                continue
            if state != "Z" and (str(path) in cmdline or any(h.startswith(str(path)) for h in held)):
                found[int(entry)] = cmdline
    return found


def open_files(pid: str) -> list[str]:
    """What process `pid` holds open; a file it closes while it is read is left out (a process
    importing modules opens and closes files all the time)."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return held


def processes_holding(path) -> set[int]:
    """Live processes that hold `path` open."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if str(path) in open_files(entry):
                    found.add(int(entry))
            except OSError:
                continue
    return found


def verdict_numbers(result: dict) -> list:
    """The verdict by parameters, without measured memory (which varies from run to run)."""

    def without_memory(value):
        if isinstance(value, dict):
            return {k: without_memory(v) for k, v in value.items() if "memory" not in k}
        return value

    return [without_memory(entry) for entry in result["verdict"]]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find orphans")
def test_ten_random_kills_leave_no_orphan_no_duplicate_and_the_same_verdict(tmp_path, tiny_causal, toy_task):
    """kill -9 `run` ten times at random moments, then let it finish: no evaluation child is left
    running, no unit has two stored results, the database is intact and the verdict is the one an
    uninterrupted run gives."""
    import random

    text = f"""
    name: kills
    task: {{name: {toy_task}, train_limit: 16, valid_limit: 8, test_limit: 12}}
    teachers:
      - {{name: teach, model: {tiny_causal}, max_new_tokens: 8, k_shots: 0}}
    students:
      - {{name: small, model: {tiny_causal}, keep_layers: "first:1"}}
    methods: {{finetune: [full], objectives: [answer, "rationale:teach"]}}
    training: {{steps: 2, batch_size: 4, max_rationale_tokens: 16, eval_before: true}}
    eval_batch_size: 8
    """
    config = tmp_path / "kills.yaml"
    config.write_text(textwrap.dedent(text))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def args(name):
        return [str(config), "--db", str(tmp_path / f"{name}.sqlite"), "--out", str(tmp_path / name), "--json"]

    clean = run_cli(args("clean"), env=env)
    started = time.time()
    stdout, stderr = clean.communicate(timeout=600)
    assert clean.returncode == 0, stderr[-3000:]
    whole = time.time() - started
    expected = json.loads(stdout)

    db = tmp_path / "killed.sqlite"
    rng = random.Random(12)
    for _ in range(10):
        attempt = run_cli(args("killed"), env=env)
        time.sleep(rng.uniform(0.5, whole / 5))
        if attempt.poll() is not None:
            break  # finished before this kill: nothing left to interrupt
        attempt.kill()
        attempt.wait()
        deadline = time.time() + 10
        while processes_using(tmp_path / "killed") and time.time() < deadline:
            time.sleep(0.1)
        assert processes_using(tmp_path / "killed") == {}, "an evaluation outlived its killed run"
    final = run_cli(args("killed"), env=env)
    stdout, stderr = final.communicate(timeout=600)
    assert final.returncode == 0, stderr[-3000:]
    assert verdict_numbers(json.loads(stdout)) == verdict_numbers(expected)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        twice = conn.execute(
            "SELECT run_key, COUNT(*) FROM evaluations WHERE run_key IS NOT NULL GROUP BY run_key HAVING COUNT(*) > 1"
        ).fetchall()
        assert twice == []
        units = {key for (key,) in conn.execute("SELECT run_key FROM runs WHERE status = 'done'")}
        stray = conn.execute("SELECT COUNT(*) FROM evaluations WHERE run_key IS NULL").fetchone()[0]
        filed = {key for (key,) in conn.execute("SELECT run_key FROM evaluations")}
    assert stray == 0  # every evaluation belongs to one finished unit (a mutual unit files one per peer)
    assert all(any(key == unit or key.startswith(unit + ":") for unit in units) for key in filed)


def eval_request(model, task, db, limit=6):
    from tinystudent.experiments.units import EvalRequest

    return EvalRequest(
        model=str(model),
        task=str(task),
        split="test",
        limit=limit,
        seed=0,
        db=str(db),
        batch_size=4,
        device="cpu",
        run_key="unit:1",
    )


@pytest.mark.slow
def test_an_evaluation_runs_in_a_fresh_process_filed_under_its_unit(tmp_path, tiny_causal, toy_task):
    from tinystudent.experiments.units import evaluate_in_subprocess
    from tinystudent.store import Store

    db, log = tmp_path / "r.sqlite", tmp_path / "eval.log"
    first = evaluate_in_subprocess(eval_request(tiny_causal, toy_task, db), log)
    again = evaluate_in_subprocess(eval_request(tiny_causal, toy_task, db), log)  # a retried unit
    assert first["n"] == 6 and 0 <= first["acc"] <= 1 and (again["acc"], again["n"]) == (first["acc"], 6)
    with Store(db) as store:
        filed = store.db.execute("SELECT id FROM evaluations WHERE run_key = 'unit:1'").fetchall()
    assert [row[0] for row in filed] == [again["evaluation_id"]]  # the retry replaced the first attempt
    assert log.read_text().count("evaluating") == 2  # the child's own messages are in the unit's log


def test_a_failed_evaluation_is_an_error_with_the_end_of_its_log(tmp_path, toy_task):
    from tinystudent.experiments.units import evaluate_in_subprocess

    log = tmp_path / "eval.log"
    with pytest.raises(RuntimeError, match=r"evaluating .*no-model failed \(see .*eval.log\): .+"):
        evaluate_in_subprocess(eval_request(tmp_path / "no-model", toy_task, tmp_path / "r.sqlite"), log)
    assert "Traceback" in log.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
def test_an_evaluation_dies_with_the_process_that_started_it(tmp_path, tiny_causal, toy_task):
    db, log = tmp_path / "r.sqlite", tmp_path / "eval.log"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from test_experiments import eval_request
        from tinystudent.experiments.units import evaluate_in_subprocess

        evaluate_in_subprocess(eval_request({str(tiny_causal)!r}, {str(toy_task)!r}, {str(db)!r}, None), Path({str(log)!r}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.time() + 120
    # The child is known by the log it holds open: between fork and exec a starting process still
    # shows its parent's command line, which names the log, and would be taken for the child.
    while time.time() < deadline and parent.poll() is None and not set(processes_holding(log)) - {parent.pid}:
        time.sleep(0.02)
    children = set(processes_holding(log)) - {parent.pid}
    assert children, "the evaluation child never started"
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while processes_using(log) and time.time() < deadline:
        time.sleep(0.1)
    assert processes_using(log) == {}, "the evaluation outlived the process that started it"
    import sqlite3

    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 0  # killed, not finished


def processes_with_parent(parent: int) -> dict[int, str]:
    """pid -> command line of the processes whose parent is `parent`."""
    found = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(next(line for line in status.read_text().splitlines() if line.startswith("PPid:")).split()[1])
            if ppid == parent:
                found[int(status.parent.name)] = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, StopIteration, ValueError):
            continue
    return found
