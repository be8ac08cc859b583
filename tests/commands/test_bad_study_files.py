"""Study files, the files beside them and secrets, as a careless or hostile user gives them
(issue 27, items 4, 5, 6, 11, 12 and 16).

A study file with a key given twice, a value no study means, nesting thousands of levels deep or
megabytes of text is refused by `run --check` with one line naming the file, the key or line and
the limit; so is every other JSON, JSONL or YAML the command line reads. A symbolic link planted
in a results folder is never written through. A password in a teacher's `base_url` is printed,
logged and stored nowhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinystudent.cli import app
from tinystudent.folders import LinkedPathError
from tinystudent.redact import redact

GOOD = [
    {"id": f"q{i}", "question": f"Is {i} even?", "choices": ["yes", "no"], "answer": "yes" if i % 2 == 0 else "no"}
    for i in range(12)
]

# Line 8 is `seeds: [0]`, line 5 `students:`: the duplicate cases name both lines.
STUDY = """name: {name}
task: {{name: {w}/good.jsonl{task}}}
teachers:
  - {{name: teach, model: {model}}}
students:
  - {{name: small, model: {model}, keep_layers: "first:1"{student}}}
methods: {{finetune: [full], objectives: [answer]}}
seeds: {seeds}
"""


def study(name: str = "ok", task: str = "", student: str = "", seeds: str = "[0]", more: str = "") -> str:
    return STUDY.format(name=name, w="{w}", model="{model}", task=task, student=student, seeds=seeds) + more


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def alias_bomb() -> str:
    """Six lines that expand to ten million values (the YAML billion laughs, smaller)."""
    lines = ["a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    for i in range(1, 7):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


FILES: dict[str, str] = {
    "good.jsonl": "".join(json.dumps(row) + "\n" for row in GOOD),
    "ok.yaml": study(),
    # 4: a key given twice
    "dup_seeds.yaml": study(more="seeds: [1]\n"),
    "dup_students.yaml": study(more="students:\n  - {name: big, model: {model}}\n"),
    "dup_nested.yaml": study(more="training:\n  epochs: 2\n  lr: 0.001\n  epochs: 3\n"),
    "dup_training.yaml": "lr: 0.001\nbatch_size: 2\nlr: 0.01\n",
    # 5, 16: values no study means
    "seed_negative.yaml": study(seeds="[-5]"),
    "seed_huge.yaml": study(seeds=str([10**23])),
    "task_seed.yaml": study(task=", seed: -1"),
    "student_seed.yaml": study(student=", seeds: [4294967296]"),
    "epochs.yaml": study(more="training: {epochs: 1000000}\n"),
    "steps.yaml": study(more="training: {steps: 1000000000}\n"),
    "lr.yaml": study(more="training: {lr: 5}\n"),
    "student_epochs.yaml": study(student=", training: {epochs: 20000}"),
    "recover_lr.yaml": study(student=", recover: {lr: 3}"),
    # 6: nesting and size
    "deep.yaml": study(seeds=deep(5000)),
    "deep_block.yaml": study(more="training:\n" + "".join("  " * i + "- \n" for i in range(1, 400)) + "\n"),
    "bomb.yaml": study(more=alias_bomb()),
    "big.yaml": study(more="# " + "x" * 1_100_000 + "\n"),
    "deep_training.yaml": "hidden_layers: " + deep(5000) + "\n",
    "deep_study.json": '{"teachers": [], "runs": ' + deep(100_000) + "}",
    "deep_rationales.jsonl": json.dumps({"id": "q0", "teacher": "t", "rationale": "because"})[:-1]
    + ', "answer": '
    + deep(100_000)
    + "}\n",
    "victim.md": "someone else's report\n",
    "victim/keep.txt": "someone else's folder\n",
}

# (case id, command line with {w} = workspace, {model} = a tiny model; words the message must hold)
CASES = [
    # 4: duplicate keys, in the study, an override and a training config
    ("dup-seeds", "run {w}/dup_seeds.yaml --check", ["dup_seeds.yaml", "'seeds'", "line 9", "line 8"]),
    ("dup-students", "run {w}/dup_students.yaml --check", ["dup_students.yaml", "'students'", "line 9", "line 5"]),
    ("dup-nested", "run {w}/dup_nested.yaml --check", ["dup_nested.yaml", "'epochs'", "line 12", "line 10"]),
    (
        "dup-override",
        "run {w}/ok.yaml --check 'training={{epochs: 1, epochs: 2}}'",
        ["training=", "'epochs'", "twice"],
    ),
    (
        "dup-train-config",
        "train --student {model} --task {w}/good.jsonl --out {w}/new --config {w}/dup_training.yaml",
        ["dup_training.yaml", "'lr'", "line 3", "line 1"],
    ),
    # 5 and 16: bounds, with the key's path
    ("seed-negative", "run {w}/seed_negative.yaml --check", ["seed_negative.yaml", "seeds.0", "greater than"]),
    ("seed-10-to-the-23", "run {w}/seed_huge.yaml --check", ["seed_huge.yaml", "seeds.0", "4294967295"]),
    ("task-seed", "run {w}/task_seed.yaml --check", ["task_seed.yaml", "task.seed"]),
    ("student-seed", "run {w}/student_seed.yaml --check", ["student_seed.yaml", "students.0.seeds.0"]),
    ("epochs", "run {w}/epochs.yaml --check", ["epochs.yaml", "training.epochs", "10000"]),
    ("steps", "run {w}/steps.yaml --check", ["steps.yaml", "training.steps", "10000000"]),
    ("lr", "run {w}/lr.yaml --check", ["lr.yaml", "training.lr", "less than 1"]),
    ("student-epochs", "run {w}/student_epochs.yaml --check", ["student_epochs.yaml", "students.0.training.epochs"]),
    ("recover-lr", "run {w}/recover_lr.yaml --check", ["recover_lr.yaml", "students.0.recover.lr"]),
    ("override-seed", "run {w}/ok.yaml --check seeds.0=-1", ["ok.yaml", "seeds.0"]),
    (
        "train-epochs",  # refused as an option, before the missing rationales are looked for
        "train --student {model} --task {w}/good.jsonl --out {w}/new --epochs 1000000 "
        "--objective rationale --rationales {w}/nope.jsonl",
        ["--epochs", "10000"],
    ),
    # 6: nesting and size, in every JSON, JSONL and YAML the command line reads
    ("deep-yaml", "run {w}/deep.yaml --check", ["deep.yaml", "line 8", "nested more than 50 levels"]),
    ("deep-block-yaml", "run {w}/deep_block.yaml --check", ["deep_block.yaml", "nested more than 50 levels"]),
    ("alias-bomb", "run {w}/bomb.yaml --check", ["bomb.yaml", "100,000 values", "aliases"]),
    ("big-yaml", "run {w}/big.yaml --check", ["big.yaml", "1,000,000 bytes"]),
    ("deep-override", "run {w}/ok.yaml --check training.steps=" + deep(3000), ["training.steps", "nested more"]),
    (
        "deep-train-config",
        "train --student {model} --task {w}/good.jsonl --out {w}/new --config {w}/deep_training.yaml",
        ["deep_training.yaml", "nested more than 50 levels"],
    ),
    ("deep-study-json", "report --study {w}/deep_study.json --out {w}/report", ["deep_study.json", "nested", "1,000"]),
    (
        "deep-rationales",
        "rationales import {w}/deep_rationales.jsonl --task {w}/good.jsonl --db {w}/r.sqlite",
        ["deep_rationales.jsonl", "line 1", "nested", "1,000"],
    ),
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links not followed) and its content hash."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = "-> " + os.readlink(path)
        elif path.is_file():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture()
def workspace(tmp_path, tiny_causal, monkeypatch):
    w = tmp_path / "w"
    for name, content in FILES.items():
        path = w / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content.replace("{w}", str(w)).replace("{model}", str(tiny_causal)), encoding="utf-8")
    monkeypatch.chdir(w)
    monkeypatch.setenv("TINYSTUDENT_DB", str(w / "default.sqlite"))
    return w


def invoke(argv: list[str]):
    result = CliRunner().invoke(app, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{argv[0]} raised {type(result.exception).__name__}: {result.exception}"
    )
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("case, args, words", CASES, ids=[case[0] for case in CASES])
def test_bad_study_file_is_one_clear_error_and_changes_nothing(workspace, tiny_causal, case, args, words):
    argv = shlex.split(args.format(w=workspace, model=tiny_causal))
    before = snapshot(workspace)
    result = invoke(argv)
    assert result.exit_code not in (0, None), f"{case} was accepted:\n{result.output}"
    flat = " ".join(result.output.split())
    assert "recursion" not in flat, flat
    for word in words:
        assert word in flat, f"{case}: {word!r} not in the message:\n{result.output}"
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1 and len(errors[0]) < 600, f"{case}: not one clear line:\n{result.output}"
    assert snapshot(workspace) == before, f"{case} changed the workspace"


def test_shipped_anchors_and_merge_keys_are_not_duplicates(workspace, tiny_causal):
    """An alias used twice, and a merged mapping whose keys are overridden, are one key each."""
    text = study().replace(
        'keep_layers: "first:1"}',
        'keep_layers: "first:1", training: &causal {epochs: 1, lr: 0.001}}\n'
        '  - {name: other, model: {model}, keep_layers: "first:1", training: {<<: *causal, epochs: 2}}\n'
        '  - {name: third, model: {model}, keep_layers: "first:1", training: *causal}',
    )
    path = workspace / "anchors.yaml"
    path.write_text(text.replace("{w}", str(workspace)).replace("{model}", str(tiny_causal)), encoding="utf-8")
    from tinystudent.experiments.config import load_experiment

    spec = load_experiment(path)
    assert [s.training.as_written() for s in spec.students] == [
        {"epochs": 1, "lr": 0.001},
        {"epochs": 2, "lr": 0.001},
        {"epochs": 1, "lr": 0.001},
    ]


def test_bounds_change_no_stored_key():
    """Field constraints change no dump: the training config's fingerprint is the one stored."""
    from tinystudent.distill.config import TrainConfig

    assert TrainConfig().fingerprint() == TrainConfig(seed=0, epochs=1.0).fingerprint()
    dumped = TrainConfig(steps=10, lr=0.5, seed=2**32 - 1).model_dump()
    assert (dumped["steps"], dumped["lr"], dumped["seed"]) == (10, 0.5, 2**32 - 1)


def test_a_budget_above_the_students_context_is_a_clear_error_before_training(workspace, tiny_causal):
    """The tiny student takes 512 tokens; inputs fitted to 4,096 would train positions it never learnt."""
    long = [{**row, "context": " ".join(["the evidence goes on"] * 400)} for row in GOOD]
    (workspace / "long.jsonl").write_text("".join(json.dumps(row) + "\n" for row in long))
    argv = [
        "train",
        "--student",
        str(tiny_causal),
        "--task",
        str(workspace / "long.jsonl"),
        "--columns",
        "question=question,choices=choices,answer=answer,context=context",
        "--out",
        str(workspace / "new"),
        "--db",
        str(workspace / "r.sqlite"),
        "--max-input-tokens",
        "4096",
        "--steps",
        "1",
    ]
    result = invoke(argv)
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "more than the 512 it takes" in flat and "max_input_tokens=4096" in flat, flat
    assert not (workspace / "new").exists() or not any((workspace / "new").rglob("*.safetensors"))


# --- 6: a TinyLLM rationale file nested too deep ------------------------------------------


def test_deep_tinyllm_rationale_file_names_the_file_and_the_limit(tmp_path):
    from tinystudent.tasks.schema import TaskFormatError
    from tinystudent.teachers.rationale_files import _read_chunks

    path = tmp_path / "llm" / "train_CoT_0.json"
    path.parent.mkdir()
    path.write_text(deep(100_000), encoding="utf-8")
    with pytest.raises(TaskFormatError, match=r"train_CoT_0.json: the file: .*nested at most about 1,000 levels"):
        _read_chunks([path])


# --- 11: symbolic links in the results folder ---------------------------------------------


def test_a_link_at_the_report_folder_of_a_run_is_refused_before_any_unit(workspace):
    out = workspace / "out"
    out.mkdir()
    (out / "report").symlink_to(workspace / "victim")
    before = snapshot(workspace)
    result = invoke(["run", str(workspace / "ok.yaml"), "--out", str(out), "--db", str(workspace / "r.sqlite")])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert f"{out / 'report'}: is a symbolic link" in flat and "victim" in flat, flat
    assert _outside_the_database(snapshot(workspace)) == _outside_the_database(before)
    assert not _runs(workspace / "r.sqlite")  # no unit was started


def test_a_link_at_the_log_folder_of_a_run_is_refused_before_any_unit(workspace):
    out = workspace / "out"
    out.mkdir()
    (out / "logs").symlink_to(workspace / "victim")
    before = snapshot(workspace)
    result = invoke(["run", str(workspace / "ok.yaml"), "--out", str(out), "--db", str(workspace / "r.sqlite")])
    assert result.exit_code == 2 and "is a symbolic link" in " ".join(result.output.split()), result.output
    assert _outside_the_database(snapshot(workspace)) == _outside_the_database(before)
    assert not _runs(workspace / "r.sqlite")


def test_a_link_at_a_units_log_file_is_never_appended_to(tmp_path):
    from tinystudent.experiments.units import UnitRunner, unit_key
    from tinystudent.store import Store

    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    logs = tmp_path / "out" / "logs"
    logs.mkdir(parents=True)
    key = unit_key("train", {"x": 1})
    (logs / f"{key.replace(':', '-', 1)}.log").symlink_to(victim)
    with Store(tmp_path / "r.sqlite") as store:
        runner = UnitRunner(store, "study", logs)
        with pytest.raises(LinkedPathError, match="is a symbolic link .* inside the results folder"):
            runner.run("train", "a unit", {"x": 1}, lambda: {"acc": 0.5})
        assert store.run(key) is None  # refused before it was recorded as running
    assert victim.read_text() == "someone else's file\n"


def test_a_training_run_folder_that_is_a_link_is_refused(tmp_path):
    from tinystudent.experiments.stages.common import StageContext
    from tinystudent.experiments.units import UnitSpec

    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    unit = UnitSpec("train", "a run", {"x": 1})
    (out / "runs" / f"{unit.key.replace(':', '-', 1)}").symlink_to(tmp_path)
    context = StageContext(None, None, None, out, None, out / "logs")  # type: ignore[arg-type]
    with pytest.raises(LinkedPathError):
        context.run_dir(unit)


def test_report_files_are_never_written_through_a_link(workspace):
    """`report --out X`: X is the user's, but a link at X/figures or at a file's temporary twin is refused."""
    study_file = workspace / "study.json"
    study_file.write_text(
        json.dumps(
            {
                "teachers": [{"name": "t", "acc": 0.5}],
                "runs": [{"label": "s / full / answer / seed 0", "acc": 0.4, "params": 1000}],
            }
        )
    )
    report = workspace / "rep"
    report.mkdir()
    (report / "report.md.partial").symlink_to(workspace / "victim.md")
    victims = {"victim.md": (workspace / "victim.md").read_text(), "victim": snapshot(workspace / "victim")}
    result = invoke(["report", "--study", str(study_file), "--out", str(report)])
    assert result.exit_code == 2 and "report.md.partial: is a symbolic link" in result.output, result.output
    (report / "report.md.partial").unlink()
    shutil.rmtree(report / "figures")  # written in the first try, as the folder is the user's own
    (report / "figures").symlink_to(workspace / "victim")
    result = invoke(["report", "--study", str(study_file), "--out", str(report)])
    assert result.exit_code == 2 and "figures: is a symbolic link" in " ".join(result.output.split()), result.output
    assert {"victim.md": (workspace / "victim.md").read_text(), "victim": snapshot(workspace / "victim")} == victims


# --- 12: a password in base_url -------------------------------------------------------------

PASSWORD = "s3cretPassw0rd"


def test_redact_masks_the_user_information_of_every_url():
    text = f'{{"base_url": ["http://user:{PASSWORD}@gpu:8000/v1", "https://tok{PASSWORD}@h/v1"], "to": "a@b.c"}}'
    masked = redact(text)
    assert PASSWORD not in masked and json.loads(masked)["to"] == "a@b.c"
    assert json.loads(masked)["base_url"] == ["http://[REDACTED]@gpu:8000/v1", "https://[REDACTED]@h/v1"]
    assert redact("http://gpu:8000/v1?user=a@b") == "http://gpu:8000/v1?user=a@b"  # no user information


def test_a_password_in_base_url_is_not_printed_by_teach(workspace):
    result = invoke(
        [
            "teach",
            "--teacher",
            "m",
            "--task",
            str(workspace / "good.jsonl"),
            "--db",
            str(workspace / "r.sqlite"),
            "--base-url",
            f"http://user:{PASSWORD}@127.0.0.1:9/v1",
            "--max-retries",
            "0",
        ]
    )
    assert result.exit_code != 0 and "127.0.0.1:9" in result.output, result.output
    assert PASSWORD not in result.output and "[REDACTED]@127.0.0.1:9" in result.output, result.output


@pytest.mark.slow
def test_a_password_in_base_url_is_in_no_message_log_or_database_row(workspace, tiny_causal):
    text = study(name="secret").replace(
        "- {name: teach, model: {model}}",
        f"- {{name: teach, model: m, backend: http, base_url: 'http://user:{PASSWORD}@127.0.0.1:9/v1'}}",
    )
    path = workspace / "secret.yaml"
    path.write_text(text.replace("{w}", str(workspace)).replace("{model}", str(tiny_causal)), encoding="utf-8")
    out, db = workspace / "out", workspace / "r.sqlite"
    result = invoke(["run", str(path), "--out", str(out), "--db", str(db)])
    assert result.exit_code != 0, result.output  # nothing answers at 127.0.0.1:9
    assert PASSWORD not in result.output and "127.0.0.1:9" in result.output, result.output
    logs = list((out / "logs").glob("*.log"))
    assert logs and all(PASSWORD not in log.read_text() for log in logs)
    assert any("[REDACTED]@127.0.0.1:9" in log.read_text() for log in logs)
    rows = _runs(db)
    assert rows and all(PASSWORD not in (config or "") + (result or "") for config, result in rows)
    assert any("[REDACTED]@127.0.0.1:9" in config for config, _ in rows)
    with sqlite3.connect(db) as connection:  # nor anywhere else in the database
        assert not any(PASSWORD.encode() in line for line in connection.iterdump() for line in [line.encode()])


def _outside_the_database(files: dict[str, str]) -> dict[str, str]:
    """A snapshot without the results database `run` opens (and its lock) before it plans."""
    return {name: digest for name, digest in files.items() if not name.startswith("r.sqlite")}


def _runs(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT config, result FROM runs").fetchall()


# --- 5: --check says how much the study will do ---------------------------------------------


def test_check_prints_the_size_of_the_study(workspace, tiny_causal):
    text = study(more="training: {epochs: 3000}\n").replace(
        "objectives: [answer]", 'objectives: [answer, "rationale:teach"]'
    )
    path = workspace / "size.yaml"
    path.write_text(text.replace("{w}", str(workspace)).replace("{model}", str(tiny_causal)), encoding="utf-8")
    result = invoke(["run", str(path), "--check", "--db", str(workspace / "r.sqlite")])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "units planned before any has run:" in flat
    assert (
        "training: 2 run(s), 60,000 training examples in all (small (full): 2 run(s) of 10 questions x 3000 epochs)"
        in flat
    )
    assert "teachers generate at most 1,280 tokens of rationales" in flat, flat  # 10 questions x 128 new tokens
    result = invoke(["run", str(path), "--check", "--json", "--db", str(workspace / "r.sqlite")])
    size = json.loads(result.stdout.strip().splitlines()[-1])["size"]
    assert (size["training_runs"], size["training_examples"], size["generated_tokens"]) == (2, 60_000, 1280)


def test_check_counts_what_on_policy_students_write(workspace, tiny_causal):
    """On-policy KD has the student write while it trains: `--check` says how much, at most."""
    text = study(more="training: {epochs: 3, onpolicy_lambda: 0.5, onpolicy_max_new_tokens: 16}\n").replace(
        "objectives: [answer]", 'objectives: [answer, "onpolicy_kd:teach"]'
    )
    path = workspace / "onpolicy.yaml"
    path.write_text(text.replace("{w}", str(workspace)).replace("{model}", str(tiny_causal)), encoding="utf-8")
    result = invoke(["run", str(path), "--check", "--json", "--db", str(workspace / "r.sqlite")])
    assert result.exit_code == 0, result.output
    size = json.loads(result.stdout.strip().splitlines()[-1])["size"]
    assert size["student_tokens"] == 10 * 3 * 8  # 10 questions x 3 epochs x (0.5 x 16 tokens), one run of two
    assert "students write at most 240 tokens of their own while training" in " ".join(result.output.split())
