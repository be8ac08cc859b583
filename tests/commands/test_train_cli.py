"""`tinystudent train`: rationales from a file or from the teacher cache, scaled-down students,
one JSON object on stdout, clear errors.

The task is the generated ARC fixture (`tests/fixtures/arc`), so these tests run without
../shared, except the one that trains on TinyLLM's real rationales imported into the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinystudent.cli import app

REQUIRED = {
    "student",
    "params",
    "trainable_params",
    "steps",
    "train_loss",
    "valid_acc",
    "test_acc",
    "tokens_per_s",
    "peak_memory_mb",
    "checkpoint",
}


@pytest.fixture(scope="module")
def arc_task():
    """The generated ARC fixture task (AI2 ARC JSON Lines in TinyLLM's layout)."""
    return str(Path(__file__).resolve().parents[1] / "fixtures" / "arc")


@pytest.fixture(scope="module")
def real_arc_task(shared_dir):
    """TinyLLM's real ARC-Challenge task folder (../shared)."""
    return str(shared_dir / "data" / "tinyllm" / "arc")


def _run(args):
    result = CliRunner().invoke(app, args)
    return result


def test_train_with_rationales_file_and_json(tiny_causal, arc_task, tmp_path):
    from tinystudent.tasks import load_task

    train = load_task(arc_task).split("train")[:6]
    lines = [
        json.dumps({"id": ex.id, "teacher": "mine", "rationale": f"Because {ex.answer_text} fits."}) for ex in train
    ]
    (tmp_path / "r.jsonl").write_text("\n".join(lines))
    result = _run(
        [
            "train",
            "--student",
            str(tiny_causal),
            "--task",
            arc_task,
            "--objective",
            "rationale",
            "--rationales",
            str(tmp_path / "r.jsonl"),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--train-limit",
            "6",
            "--valid-limit",
            "4",
            "--test-limit",
            "4",
            "--keep-layers",
            "first:1",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert REQUIRED <= set(row)
    assert row["steps"] == 3 and row["test_acc"] is not None and row["student"].endswith("(first:1)")
    assert row["params"] < 94528  # one of two layers kept
    from tinystudent.store import Store

    with Store() as store:
        assert store.run(row["run_key"])["status"] == "done"


def test_train_reads_rationales_from_the_teacher_cache(tiny_seq2seq, real_arc_task, tmp_path):
    """TinyLLM's real rationale files, imported into the cache (needs ../shared)."""
    from tinystudent.store import Store
    from tinystudent.teachers import read_tinyllm, store_rationales

    arc_task = real_arc_task
    imported = read_tinyllm(Path(arc_task), "train")
    with Store() as store:
        store_rationales(store, imported.rationales[:40], arc_task, imported.questions)
    result = _run(
        [
            "train",
            "--student",
            str(tiny_seq2seq),
            "--task",
            arc_task,
            "--teachers",
            "flan-t5-xl,llama-2-chat-7b",
            "--objective",
            "rationale",
            "--weight",
            "rationale.flan-t5-xl=0.5",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--train-limit",
            "8",
            "--valid-limit",
            "2",
            "--no-test",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["teachers"] == ["flan-t5-xl", "llama-2-chat-7b"] and row["test_acc"] is None
    history = json.loads((tmp_path / "run" / "result.json").read_text())["results"][0]["loss_history"]
    assert any("rationale:flan-t5-xl" in h for h in history) and any("rationale:llama-2-chat-7b" in h for h in history)


def test_train_errors_are_one_clear_line(tiny_causal, arc_task, tmp_path):
    result = _run(
        [
            "train",
            "--student",
            str(tiny_causal),
            "--task",
            arc_task,
            "--objective",
            "rationale",
            "--teachers",
            "nobody",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ]
    )
    assert result.exit_code == 2 and "no cached rationales of teacher 'nobody'" in result.output
    result = _run(["train", "--student", str(tiny_causal), "--task", arc_task, "--objective", "magic"])
    assert result.exit_code == 2 and "unknown ['magic']" in result.output
    result = _run(
        [
            "train",
            "--student",
            str(tiny_causal),
            "--task",
            arc_task,
            "--objective",
            "rationale",
            "--teachers",
            "flan-t5-xl",
            "--strategy",
            "magic",
        ]
    )
    assert result.exit_code == 2 and "--strategy 'magic': rationales come from one of" in result.output
    result = _run(["train", "--student", str(tiny_causal), "--task", arc_task, "--precision", "fp8"])
    assert result.exit_code == 2 and "Invalid value for '--precision': Value error, 'fp8' is not one of 'auto'" in (
        " ".join(result.output.split())
    )
    result = _run(
        [
            "train",
            "--student",
            str(tiny_causal),
            "--task",
            arc_task,
            "--method",
            "lora",
            "--lora-targets",
            "nothing_here",
            "--train-limit",
            "4",
            "--out",
            str(tmp_path / "r2"),
            "--device",
            "cpu",
        ]
    )
    assert result.exit_code == 2 and "match nothing" in result.output


def test_train_options_are_train_config_fields():
    """Every TrainConfig field with a command-line form is an option: its name in kebab case, its
    default and its description as help; the older names keep working."""
    import typer

    from tinystudent.commands.options import config_fields
    from tinystudent.distill import TrainConfig

    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p for p in command.params}
    fields = config_fields(TrainConfig, skip=("weights",))
    assert {"batch_size", "lr", "precision", "lora_rank", "lora_target_modules", "packing"} <= {f.name for f in fields}
    for field in fields:
        option = options[field.name]
        default = field.field.get_default(call_default_factory=True)
        assert option.default == default and option.help == field.field.description, field.path
        assert "--" + field.name.replace("_", "-") in option.opts
    names = {name for p in command.params for name in p.opts + p.secondary_opts}
    assert {"--divergence", "--patience", "--lora-targets", "--merge", "--no-merge"} <= names
    assert "weights" not in options and "betas" not in options  # --objective/--weight; config file only


def test_only_the_options_given_override_the_config_file(tmp_path, monkeypatch):
    from tinystudent.commands import train as train_module

    seen = {}

    def stop(config_file, options):
        seen.update(options)
        raise ValueError("stopped before loading the task")

    (tmp_path / "run.yaml").write_text("method: lora\nbatch_size: 4\nlora: {rank: 4, merge: true}\n")
    monkeypatch.setattr(train_module, "_config", stop)
    args = ["train", "-s", "m", "-t", "t", "--config", str(tmp_path / "run.yaml"), "--grad-accum", "2"]
    result = _run([*args, "--lora-targets", "q_proj, v_proj", "--no-merge", "--divergence", "jsd", "--no-packing"])
    assert result.exit_code == 2 and "stopped before loading the task" in result.output
    weights = seen.pop("weights")
    assert weights == {"answer": 1.0}
    assert seen == {
        "grad_accum": 2,
        "lora": {"target_modules": ["q_proj", "v_proj"], "merge": False},
        "logit_kd_divergence": "jsd",
        "packing": False,
    }
    monkeypatch.undo()
    config = train_module._config(tmp_path / "run.yaml", {**seen, "weights": weights})
    assert (config.method, config.batch_size, config.grad_accum, config.packing) == ("lora", 4, 2, False)
    assert (config.lora.rank, config.lora.merge, config.lora.target_modules) == (4, False, ["q_proj", "v_proj"])


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--lr", "abc", "Invalid value for '--lr': Input should be a valid number"),
        ("--lr", "0", "Invalid value for '--lr': Input should be greater than 0"),
        ("--batch-size", "0", "Invalid value for '--batch-size': Input should be greater than or equal to 1"),
        ("--warmup-ratio", "1", "Invalid value for '--warmup-ratio': Input should be less than 1"),
        ("--divergence", "kl", "Invalid value for '--logit-kd-divergence' / '--divergence': Value error, 'kl'"),
    ],
)
def test_a_bad_option_value_is_one_line_naming_the_option(option, value, message):
    result = _run(["train", "-s", "m", "-t", "t", option, value])
    assert result.exit_code == 2 and message in " ".join(result.output.split())
