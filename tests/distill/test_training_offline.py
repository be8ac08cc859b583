"""Training without ../shared: the loss falls, the student learns its questions, teachers'
rationales from TinyLLM-shaped files train, a killed run resumes on the same trajectory, and
`tinystudent train` runs end to end.

Everything comes from `tests/fixtures/` (written by `tests/fixtures/make_fixtures.py`): an
ARC-format task and a BioASQ-shaped task with TinyLLM-shaped rationale files, and `tiny-llama`,
a 2-layer, 32-wide Llama with its own byte-level tokenizer. The seq2seq student is built here by
`fresh_student` with that tokenizer. No hub, no cache, no ../shared; these tests cover what
`test_distill_train.py` and `test_train_cli.py` check on the real TinyLLM data, which they skip
without ../shared.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinystudent.cli import app
from tinystudent.distill import TrainConfig, train_student
from tinystudent.evaluation import evaluate_model
from tinystudent.models import load_model
from tinystudent.tasks import load_task
from tinystudent.teachers import import_tinyllm_rationales

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_LLAMA = FIXTURES / "tiny-llama"
FLAN, LLAMA = "flan-t5-xl", "llama-2-chat-7b"


def load_fixture_task(name: str) -> dict:
    data = load_task(str(FIXTURES / name))
    return {
        "path": str(FIXTURES / name),
        "train": data.split("train"),
        "valid": data.split("validation"),
        "test": data.split("test"),
        "rationales": import_tinyllm_rationales(FIXTURES / name, "train"),
    }


@pytest.fixture(scope="module")
def arc() -> dict:
    return load_fixture_task("arc")


@pytest.fixture(scope="module")
def bioasq() -> dict:
    return load_fixture_task("bioasq")


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    """A fresh 2-layer, 32-wide T5 with the fixture model's tokenizer."""
    from transformers import AutoTokenizer

    from tinystudent.models.students import fresh_student

    tokenizer = AutoTokenizer.from_pretrained(TINY_LLAMA)
    config = {
        "model_type": "t5",
        "vocab_size": len(tokenizer),
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }
    return fresh_student(config, tmp_path_factory.mktemp("t5") / "student", tokenizer_from=str(TINY_LLAMA), seed=0)


def config(**changes) -> TrainConfig:
    base = dict(
        steps=8,
        batch_size=8,
        lr=1e-2,
        warmup_ratio=0.0,
        eval_before=False,
        device="cpu",
        precision="fp32",
        log_every=1,
        max_rationale_tokens=48,
    )
    base.update(changes)
    return TrainConfig(**base)


def falls(history: list[dict], term: str) -> bool:
    """The mean of the last two values is below the mean of the first two."""
    values = [h[term] for h in history if term in h]
    return len(values) >= 4 and sum(values[-2:]) / 2 < sum(values[:2]) / 2


def test_fixtures_are_what_the_generator_writes_and_load_in_their_formats(arc, bioasq, tmp_path):
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.write_tasks(tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    assert len(written) == 10
    for relative in written:
        assert (tmp_path / relative).read_bytes() == (FIXTURES / relative).read_bytes(), relative

    assert load_task(arc["path"]).origin["format"] == "ai2_jsonl"
    assert [len(arc[s]) for s in ("train", "valid", "test")] == [32, 12, 12]
    assert load_task(bioasq["path"]).origin["format"] == "tinyllm"
    assert all(ex.context and ex.choices == ("yes", "no") for ex in bioasq["train"])
    for task in (arc, bioasq):
        by_teacher = task["rationales"]
        assert len(by_teacher[FLAN]) == len(task["train"])  # FLAN-T5 has one for every question
        assert 0 < len(by_teacher[LLAMA]) < len(task["train"])  # LLaMA-2's is missing for some


@pytest.mark.parametrize("answer_loss", ["tokens", "choices"])
def test_answer_training_lowers_the_loss_and_learns_the_training_questions(answer_loss, arc, tmp_path):
    """Without validation examples the final model is kept: it answers more training questions
    right than the untrained one, and its choice scores on unseen questions changed."""
    before = load_model(str(TINY_LLAMA), device="cpu")
    train_before = evaluate_model(before, arc["train"], "arc", "train")
    valid_before = evaluate_model(before, arc["valid"], "arc", "validation")
    result = train_student(
        str(TINY_LLAMA),
        arc["train"],
        [],
        config(steps=30, answer_loss=answer_loss),
        tmp_path / "run",
        task="arc",
        test_examples=arc["valid"],
    )
    assert falls(result.loss_history, "answer") and falls(result.loss_history, "loss")
    assert result.steps == 30 and result.params == result.trainable_params == 30_880
    after = load_model(result.checkpoint, device="cpu")
    train_after = evaluate_model(after, arc["train"], "arc", "train")
    valid_after = evaluate_model(after, arc["valid"], "arc", "validation")
    assert train_after.acc >= train_before.acc + 0.25, (train_before.acc, train_after.acc)
    assert result.test_acc == valid_after.acc  # the run measured the kept model as evaluation does
    # Unseen questions: every one's choice scores moved, and some answers changed.
    pairs = list(zip(valid_before.predictions, valid_after.predictions))
    assert any(a.pred != b.pred for a, b in pairs)
    assert min(max(abs(x - y) for x, y in zip(a.choice_logprobs, b.choice_logprobs)) for a, b in pairs) > 0.1


@pytest.mark.parametrize("student,task", [("tiny_llama", "arc"), ("tiny_t5", "bioasq"), ("tiny_llama", "bioasq")])
def test_rationales_from_tinyllm_files_train_each_teacher(student, task, request, tmp_path):
    data = request.getfixturevalue(task)
    path = str(TINY_LLAMA) if student == "tiny_llama" else str(request.getfixturevalue(student))
    result = train_student(
        path,
        data["train"],
        data["valid"][:4],
        config(weights={"rationale": {FLAN: 1.0, LLAMA: 0.5}}, max_input_tokens=320),
        tmp_path / "run",
        rationales=data["rationales"],
        task=task,
    )
    for term in (f"rationale:{FLAN}", f"rationale:{LLAMA}", "answer", "loss"):
        assert falls(result.loss_history, term), [h.get(term) for h in result.loss_history]
    first = result.loss_history[0]
    expected = first["answer"] + first[f"rationale:{FLAN}"] + 0.5 * first[f"rationale:{LLAMA}"]
    assert first["loss"] == pytest.approx(expected, rel=1e-5)  # the weights are the ones asked for
    assert result.valid_acc is not None


@pytest.mark.slow
def test_an_encoder_reads_the_rationales_at_training_time_only(bioasq, tiny_encoder, tmp_path):
    """A student that writes no text learns from rationales by reading them: each question again,
    its teacher's rationale after the question (evidence shortened, question kept), weighted per
    teacher; evaluation reads the plain question."""
    from tinystudent.distill.data import build_features

    loaded = load_model(str(tiny_encoder), device="cpu")
    example = bioasq["train"][0]
    features, _ = build_features(
        [example],
        loaded.tokenizer,
        kind="encoder",
        style="context",
        rationales=bioasq["rationales"],
        choice_logprobs={},
        rationale_prompt="{question}",
        max_input=120,
        max_answer=8,
        max_rationale=12,
    )
    read = features[example.id].rationale_contexts[FLAN]
    rationale = bioasq["rationales"][FLAN][example.id]
    assert f"Question: {example.question}\nExplanation: " in read and read.endswith("\nAnswer:")
    assert rationale.startswith(read.split("\nExplanation: ")[1].removesuffix("\nAnswer:"))  # its first tokens
    result = train_student(
        str(tiny_encoder),
        bioasq["train"],
        bioasq["valid"][:4],
        config(weights={"rationale": {FLAN: 1.0, LLAMA: 0.5}}, max_input_tokens=160, steps=40, lr=3e-3),
        tmp_path / "run",
        rationales=bioasq["rationales"],
        task="bioasq",
        test_examples=bioasq["test"],
    )
    first = result.loss_history[0]
    expected = first["answer"] + first[f"rationale_input:{FLAN}"] + 0.5 * first[f"rationale_input:{LLAMA}"]
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    assert falls(result.loss_history, f"rationale_input:{FLAN}"), [
        h[f"rationale_input:{FLAN}"] for h in result.loss_history
    ]
    assert result.test_eval["n"] == len(bioasq["test"]) and result.contamination["overlap"] == 0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_killed_run_resumes_on_the_same_trajectory(method, arc, tmp_path):
    cfg = config(
        method=method,
        steps=6,
        batch_size=3,
        grad_accum=2,
        checkpoint_every=2,
        eval_every=3,
        warmup_ratio=0.2,
        lora={"dropout": 0.3},
        weights={"rationale": 0.5},
    )
    args = dict(rationales=arc["rationales"], task="arc")
    whole = train_student(str(TINY_LLAMA), arc["train"], arc["valid"][:4], cfg, tmp_path / "whole", **args)

    def kill(progress):
        if progress["step"] == 5:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train_student(str(TINY_LLAMA), arc["train"], arc["valid"][:4], cfg, tmp_path / "resumed", on_step=kill, **args)
    assert (tmp_path / "resumed" / "checkpoints" / "LATEST").read_text() == "step-0000004"
    resumed = train_student(str(TINY_LLAMA), arc["train"], arc["valid"][:4], cfg, tmp_path / "resumed", **args)
    assert [h["loss"] for h in resumed.loss_history] == [h["loss"] for h in whole.loss_history]
    assert resumed.valid_history == whole.valid_history
    assert resumed.steps == 6


def _train_cli(*args: str) -> dict:
    result = CliRunner().invoke(app, ["train", *args, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_trains_a_scaled_down_student_from_a_rationales_file(arc, tmp_path):
    lines = [
        json.dumps({"id": ex.id, "teacher": "mine", "rationale": f"Because {ex.answer_text} fits."})
        for ex in arc["train"][:6]
    ]
    (tmp_path / "r.jsonl").write_text("\n".join(lines))
    row = _train_cli(
        *("--student", str(TINY_LLAMA), "--task", arc["path"], "--objective", "rationale"),
        *("--rationales", str(tmp_path / "r.jsonl"), "--steps", "3", "--batch-size", "2"),
        *("--train-limit", "6", "--valid-limit", "4", "--test-limit", "4", "--keep-layers", "first:1"),
        *("--out", str(tmp_path / "run")),
    )
    assert row["steps"] == 3 and row["test_acc"] is not None and row["student"].endswith("(first:1)")
    assert row["params"] < 30_880  # one of two layers kept
    from tinystudent.store import Store

    with Store() as store:
        assert store.run(row["run_key"])["status"] == "done"


def test_cli_trains_on_rationales_imported_into_the_teacher_cache(tiny_t5, arc, tmp_path):
    from tinystudent.store import Store
    from tinystudent.teachers import read_tinyllm, store_rationales

    imported = read_tinyllm(FIXTURES / "arc", "train")
    with Store() as store:
        store_rationales(store, imported.rationales, arc["path"], imported.questions)
    row = _train_cli(
        *("--student", str(tiny_t5), "--task", arc["path"], "--teachers", f"{FLAN},{LLAMA}"),
        *("--objective", "rationale", "--weight", f"rationale.{FLAN}=0.5", "--steps", "2"),
        *("--batch-size", "2", "--train-limit", "8", "--valid-limit", "2", "--no-test"),
        *("--out", str(tmp_path / "run")),
    )
    assert row["teachers"] == [FLAN, LLAMA] and row["test_acc"] is None
    history = json.loads((tmp_path / "run" / "result.json").read_text())["results"][0]["loss_history"]
    assert all(f"rationale:{FLAN}" in h for h in history) and any(f"rationale:{LLAMA}" in h for h in history)
