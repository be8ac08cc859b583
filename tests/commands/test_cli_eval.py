"""`tinystudent eval` as a user runs it: one JSON object on stdout, clear errors, stored results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tinystudent.store import Store


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tinystudent", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture()
def toy_task(tmp_path):
    rows = [
        {
            "id": f"q{i}",
            "question": f"Question number {i}?",
            "choices": ["yes", "no"],
            "answer": "yes" if i % 3 else "no",
        }
        for i in range(30)
    ]
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.slow
def test_eval_json_prints_one_object(tiny_causal, toy_task, tmp_path):
    db = tmp_path / "results.sqlite"
    done = run_cli(
        "eval",
        "--model",
        str(tiny_causal),
        "--task",
        str(toy_task),
        "--split",
        "all",
        "--limit",
        "12",
        "--json",
        "--db",
        str(db),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    for key in (
        "task",
        "model",
        "split",
        "n",
        "acc",
        "acc_norm",
        "ci95",
        "majority_baseline",
        "params",
        "peak_memory_mb",
        "latency_ms_p50",
        "questions_per_s",
    ):
        assert key in summary
    assert summary["n"] == 12 and len(summary["ci95"]) == 2
    assert summary["majority_baseline"] == pytest.approx(8 / 12)  # 8 of the first 12 are "yes"
    with Store(db) as store:
        assert len(store.predictions(summary["evaluation_id"])) == 12


@pytest.mark.slow
def test_progress_goes_to_a_log_file_as_plain_lines(tiny_causal, toy_task, tmp_path):
    """With stderr redirected (not a terminal) eval still says how far it is, in plain lines."""
    import os

    env = {**os.environ, "TINYSTUDENT_PROGRESS_SECONDS": "0"}
    done = run_cli(
        "eval",
        "--model",
        str(tiny_causal),
        "--task",
        str(toy_task),
        "--split",
        "all",
        "--limit",
        "12",
        "--batch-size",
        "4",
        "--json",
        "--db",
        str(tmp_path / "r.sqlite"),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("tinystudent: questions: ")]
    assert [line.split(": ")[2].split(",")[0] for line in lines] == ["4/12", "8/12", "12/12"]
    assert "/s" in lines[0] and "left" in lines[0] and "\x1b[" not in done.stderr


@pytest.mark.slow
def test_a_lora_adapter_folder_is_evaluated_and_scored_on_its_base(tiny_causal, toy_task, tmp_path):
    """`eval` and `loss` take the `best/` adapter folder of a LoRA run: the adapter's answers, not
    the base model's and not an error asking for a config.json."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tinystudent.models import load_model

    base = load_model(str(tiny_causal), device="cpu")
    tuned = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, weight in tuned.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=2.0)
    tuned.save_pretrained(tmp_path / "best")
    base.tokenizer.save_pretrained(tmp_path / "best")
    results = {}
    for name, model in (("base", str(tiny_causal)), ("adapter", str(tmp_path / "best"))):
        done = run_cli(
            "eval",
            "--model",
            model,
            "--task",
            str(toy_task),
            "--split",
            "all",
            "--json",
            "--db",
            str(tmp_path / "r.sqlite"),
        )
        assert done.returncode == 0, done.stderr
        results[name] = json.loads(done.stdout)
    with Store(tmp_path / "r.sqlite") as store:
        logprobs = {
            name: [p["choice_logprobs"] for p in store.predictions(results[name]["evaluation_id"])] for name in results
        }
    assert logprobs["adapter"] != logprobs["base"]
    loss = run_cli(
        "loss", "--model", str(tmp_path / "best"), "--task", str(toy_task), "--json", "--db", str(tmp_path / "r.sqlite")
    )
    assert loss.returncode == 0 and "config.json" not in loss.stderr, loss.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "command,in_table,message",
    [
        (["eval", "--model", "MODEL", "--limit", "6"], "majority baseline", "evaluating"),
        (
            ["teach", "--teacher", "MODEL", "--limit", "3", "--strategy", "cot", "--max-new-tokens", "4"],
            "generated",
            "teaching",
        ),
        (["loss", "--model", "MODEL"], "bits per byte", "scoring"),
        (
            [
                "train",
                "--student",
                "MODEL",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--train-limit",
                "4",
                "--valid-limit",
                "4",
                "--no-test",
                "--device",
                "cpu",
                "--out",
                "OUT",
            ],
            "trainable_params",
            "training",
        ),
    ],
)
def test_result_table_goes_to_stdout_and_progress_to_stderr(
    tiny_causal, toy_task, tmp_path, command, in_table, message
):
    """`tinystudent eval ... > result.txt` keeps the result; messages stay on the screen."""
    fill = {"MODEL": str(tiny_causal), "OUT": str(tmp_path / "run")}
    args = [fill.get(a, a) for a in command] + ["--task", str(toy_task), "--db", str(tmp_path / "r.sqlite")]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert in_table in done.stdout
    assert message in done.stderr and message not in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "arc_medium"], "one of"),
        (["--task", "/nonexistent/file.jsonl"], "an existing file or folder"),
        (["--task", "TOY", "--split", "dev2"], "no split 'dev2'"),
        (["--task", "TOY", "--limit", "0"], "--limit must be at least 1"),
        (["--task", "TOY", "--mode", "vibes"], "mode must be one of"),
    ],
)
def test_eval_bad_arguments_fail_clearly(tiny_causal, toy_task, args, message):
    args = [str(toy_task) if a == "TOY" else a for a in args]
    done = run_cli("eval", "--model", str(tiny_causal), *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_db_that_is_not_a_database_fails_before_any_model_work(tiny_causal, toy_task, tmp_path):
    (tmp_path / "notes.sqlite").write_text("my notes, not a database")
    (tmp_path / "folder").mkdir()
    for db, message in (
        ("notes.sqlite", "cannot be used as the results database (file is not a database)"),
        ("folder", "is a folder; the results database is a file"),
    ):
        done = run_cli("eval", "--model", str(tiny_causal), "--task", str(toy_task), "--db", str(tmp_path / db))
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "notes.sqlite").read_text() == "my notes, not a database"  # left as it was


def test_eval_missing_model_fails_clearly(toy_task, tmp_path):
    done = run_cli("eval", "--model", str(tmp_path / "no-model"), "--task", str(toy_task))
    assert done.returncode == 2 and "no such folder" in done.stderr


def test_every_command_has_help():
    import typer.main
    from typer.testing import CliRunner

    from tinystudent.cli import app

    done = run_cli("--help")
    assert done.returncode == 0 and "eval" in done.stdout
    names = sorted(typer.main.get_command(app).commands)
    assert "eval" in names
    runner = CliRunner()
    for name in names:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, name
