"""On-policy distillation (`onpolicy_kd`, GKD): the student's divergence from the teacher on its own
samples falls as it trains; `onpolicy_lambda` decides which rows the student writes (0: none, no
generation at all; 1: every row); the term parses, and bad settings are clear errors.

Student and teacher are tiny random Llamas (2 layers, 64 wide) sharing the byte-level tokenizer of
`conftest.build_tiny`; the questions are the generated ARC fixture's. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tinystudent.distill import TrainConfig, train_student
from tinystudent.distill.objective_spec import parse_experiment_objective, parse_objective
from tinystudent.distill.terms import TermWeights, term
from tinystudent.distill.terms.base import STUDENT_SAMPLES
from tinystudent.distill.terms.onpolicy_kd import sampled_rows, student_continuations

FIXTURE_ARC = Path(__file__).resolve().parents[1] / "fixtures" / "arc"


@pytest.fixture(scope="module")
def arc():
    from tinystudent.tasks import load_task

    return load_task(str(FIXTURE_ARC)).split("train")[:16]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """Another random model with the student's tokenizer (a different seed)."""
    from conftest import build_tiny

    return build_tiny("causal", tmp_path_factory.mktemp("teacher") / "llama", seed=7)


def config(**changes) -> TrainConfig:
    base = dict(
        steps=2,
        batch_size=4,
        lr=1e-2,
        warmup_ratio=0.0,
        eval_before=False,
        device="cpu",
        precision="fp32",
        log_every=1,
        temperature=1.0,
        onpolicy_max_new_tokens=12,
        max_input_tokens=160,
        weights={"answer": 1.0, "onpolicy_kd": 1.0},
    )
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture
def generation_calls(monkeypatch) -> list[int]:
    """The number of prompts of each call of the package's decoder."""
    import tinystudent.models.generation as generation

    calls: list[int] = []
    original = generation.generate_rows

    def counted(model, tokenizer, kind, prompt_ids, rows):
        calls.append(len(prompt_ids))
        return original(model, tokenizer, kind, prompt_ids, rows)

    monkeypatch.setattr(generation, "generate_rows", counted)
    return calls


def own_sample_divergence(student_path, teacher_path, prompts: list[list[int]], divergence: str) -> float:
    """Mean divergence from the teacher on continuations the student samples now (fixed seeds)."""
    from tinystudent.distill.data import token_batch
    from tinystudent.distill.objectives import StudentBatch, StudentObjectives, teacher_states
    from tinystudent.models import load_model

    student, teacher = load_model(str(student_path), device="cpu"), load_model(str(teacher_path), device="cpu")
    written = student_continuations(
        student.model,
        student.tokenizer,
        student.kind,
        prompts,
        max_new_tokens=12,
        temperature=1.0,
        seeds=list(range(len(prompts))),
    )
    samples = token_batch(list(zip(prompts, written)), student.kind, student.tokenizer.pad_token_id)
    batch = StudentBatch(torch.zeros(len(prompts), dtype=torch.long), samples=samples)
    weights = TermWeights({"onpolicy_kd": 1.0})
    objective = StudentObjectives(student.model, student.kind, weights=weights, temperature=1.0, divergence=divergence)
    with torch.no_grad():
        states = teacher_states(teacher.model, teacher.kind, None, batch, True, [])
        return float(objective(batch, states)["onpolicy_kd"])


@pytest.mark.slow
def test_the_divergence_on_the_students_own_samples_falls(arc, tiny_causal, tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    prompts = [tokenizer.encode(f"Question: {ex.question}\nAnswer:") for ex in arc[:8]]
    before = own_sample_divergence(tiny_causal, tiny_teacher, prompts, "reverse_kl")
    result = train_student(
        str(tiny_causal),
        arc,
        [],
        config(
            steps=30, onpolicy_lambda=1.0, logit_kd_divergence="reverse_kl", weights={"answer": 0.0, "onpolicy_kd": 1.0}
        ),
        tmp_path / "run",
        teacher=str(tiny_teacher),
        task="arc",
    )
    after = own_sample_divergence(result.checkpoint, tiny_teacher, prompts, "reverse_kl")
    assert after < 0.7 * before, (before, after)
    logged = [h["onpolicy_kd"] for h in result.loss_history]
    assert len(logged) == 30 and sum(logged[-5:]) < sum(logged[:5])


def test_lambda_0_generates_nothing_and_lambda_1_every_row(arc, tiny_causal, tiny_teacher, generation_calls, tmp_path):
    gold = train_student(
        str(tiny_causal), arc, [], config(onpolicy_lambda=0.0), tmp_path / "gold", teacher=str(tiny_teacher)
    )
    assert generation_calls == []
    assert all("answer" in h and "onpolicy_kd" not in h for h in gold.loss_history)

    own = train_student(
        str(tiny_causal), arc, [], config(onpolicy_lambda=1.0), tmp_path / "own", teacher=str(tiny_teacher)
    )
    assert generation_calls == [4, 4]  # every row of both steps' batches
    assert all("onpolicy_kd" in h and "answer" not in h for h in own.loss_history)  # no gold rows, no CE


def test_lambda_0_is_logit_kd_on_the_gold_answers(arc, tiny_causal, tiny_teacher, tmp_path):
    """GKD's lambda 0 is supervised KD: the same steps as logit_kd on the answers."""
    runs = {}
    for name in ("onpolicy_kd", "logit_kd"):
        result = train_student(
            str(tiny_causal),
            arc,
            [],
            config(onpolicy_lambda=0.0, weights={"answer": 1.0, name: 0.5}),
            tmp_path / name,
            teacher=str(tiny_teacher),
        )
        runs[name] = [h["loss"] for h in result.loss_history]
    assert runs["onpolicy_kd"] == pytest.approx(runs["logit_kd"], rel=1e-6)


def test_rows_are_drawn_with_the_share_and_seeded():
    assert sampled_rows(64, 0.0, 0, 8) == []
    assert sampled_rows(64, 1.0, 0, 8) == list(range(64))
    half = sampled_rows(64, 0.5, 0, 8)
    assert half == sampled_rows(64, 0.5, 0, 8) and 16 < len(half) < 48
    assert half != sampled_rows(64, 0.5, 0, 12)  # another batch, another draw


def test_the_student_writes_each_row_to_its_own_end(tiny_causal):
    from tinystudent.models import load_model

    student = load_model(str(tiny_causal), device="cpu")
    student.model.train()
    prompts = [student.tokenizer.encode("The sun is"), student.tokenizer.encode("Water boils at one")]
    kwargs = dict(max_new_tokens=5, temperature=1.0, seeds=[1, 2])
    written = student_continuations(student.model, student.tokenizer, student.kind, prompts, **kwargs)
    assert student.model.training  # put back in training mode
    assert written == student_continuations(student.model, student.tokenizer, student.kind, prompts, **kwargs)
    eos = student.tokenizer.eos_token_id
    assert all(0 < len(row) <= 5 or (row[-1] == eos and len(row) <= 6) for row in written)
    context = max(len(p) for p in prompts) + 2
    room = student_continuations(student.model, student.tokenizer, student.kind, prompts, **kwargs, context=context)
    for prompt, row in zip(prompts, room):  # no more than the context leaves after the prompt
        assert len([t for t in row if t != eos]) <= min(5, context - len(prompt))
    assert len(room[1]) <= 3
    with pytest.raises(ValueError, match="one sampling seed per prompt"):
        student_continuations(
            student.model, student.tokenizer, student.kind, prompts, max_new_tokens=2, temperature=0, seeds=[1]
        )


def test_objective_strings_parse_and_bad_settings_are_clear_errors():
    assert parse_objective("onpolicy_kd:teacher").term == "onpolicy_kd"
    assert parse_objective("onpolicy_kd:teacher").teacher == "teacher"
    assert parse_objective("onpolicy_kd").teacher is None
    assert parse_experiment_objective("onpolicy_kd:smol").teacher == "smol"  # a study method too
    found = term("onpolicy_kd")
    assert found.teacher_model and found.kd_on(STUDENT_SAMPLES) and found.kd_on("answer")
    assert not term("logit_kd").kd_on(STUDENT_SAMPLES)
    with pytest.raises(ValueError, match="token-level terms need a teacher model"):
        found.check(1.0, teacher_model=False)
    for bad in ({"onpolicy_lambda": 1.5}, {"onpolicy_lambda": -0.1}, {"logit_kd_divergence": "kl"}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="onpolicy_lambda is the share of rows"):
        sampled_rows(4, 2.0, 0, 0)


def test_the_onpolicy_settings_key_only_the_runs_that_use_them():
    plain = TrainConfig()
    assert "onpolicy_lambda" not in plain.keyed()
    assert plain.fingerprint() == TrainConfig(onpolicy_lambda=0.9).fingerprint()
    on = TrainConfig(weights={"onpolicy_kd": 1.0})
    assert on.keyed()["onpolicy_lambda"] == 0.5
    assert on.fingerprint() != TrainConfig(weights={"onpolicy_kd": 1.0}, onpolicy_lambda=0.9).fingerprint()


def test_train_takes_the_term_and_its_settings():
    from typer.testing import CliRunner

    from tinystudent.cli import app
    from tinystudent.commands.train import objective_weights

    assert objective_weights("answer,onpolicy_kd", ["onpolicy_kd=0.5"]) == {"answer": 1.0, "onpolicy_kd": 0.5}
    help_text = " ".join(CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output.split())
    for option in ("--onpolicy-lambda", "--onpolicy-max-new-tokens", "--onpolicy-temperature", "onpolicy_kd"):
        assert option in help_text, option


def test_train_runs_onpolicy_kd_from_the_command_line(tiny_causal, tiny_teacher, tmp_path):
    import json

    from typer.testing import CliRunner

    from tinystudent.cli import app

    args = ["train", "--student", str(tiny_causal), "--task", str(FIXTURE_ARC), "--objective", "onpolicy_kd"]
    args += ["--teacher-model", str(tiny_teacher), "--onpolicy-lambda", "1", "--onpolicy-max-new-tokens", "4"]
    args += ["--divergence", "jsd", "--steps", "2", "--batch-size", "2", "--train-limit", "4", "--no-test"]
    args += ["--valid-limit", "2", "--no-eval-before", "--out", str(tmp_path / "run"), "--device", "cpu", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 2
    row = json.loads((tmp_path / "run" / "result.json").read_text())["results"][0]
    assert row["config"]["onpolicy_lambda"] == 1.0 and row["config"]["logit_kd_divergence"] == "jsd"
    assert all("onpolicy_kd" in h for h in row["loss_history"])


def test_each_terms_divergence_is_a_mean_over_the_batches_it_covers():
    from tinystudent.distill.objectives import StudentObjectives, TeacherStates
    from tinystudent.models.batches import TokenBatch

    def batch(targets: int) -> TokenBatch:
        mask = torch.zeros(1, 10, dtype=torch.bool)
        mask[0, :targets] = True
        return TokenBatch(torch.zeros(1, 10, dtype=torch.long), torch.ones(1, 10, dtype=torch.long), mask)

    model = torch.nn.Linear(2, 2)
    objective = StudentObjectives(model, "causal", weights=TermWeights({"logit_kd": 1.0, "onpolicy_kd": 2.0}))
    batches = {"answer": batch(3), "rationale:t": batch(2), STUDENT_SAMPLES: batch(5)}
    ran = TeacherStates(torch.zeros(1), None)
    scales = objective._kd_scales(batches, dict.fromkeys(batches, ran))
    assert scales["answer"] == pytest.approx(1 / 5 + 2 / 8)  # logit_kd: answer + rationale; onpolicy: + samples
    assert scales["rationale:t"] == pytest.approx(1 / 5)
    assert scales[STUDENT_SAMPLES] == pytest.approx(2 / 8)


def test_no_cross_entropy_on_the_students_own_tokens(tiny_causal):
    """With itself as the teacher, the student's own samples give a zero loss and zero gradients:
    they carry the divergence alone, no cross-entropy."""
    from tinystudent.distill.data import token_batch
    from tinystudent.distill.objectives import StudentBatch, StudentObjectives, teacher_states
    from tinystudent.models import load_model

    student = load_model(str(tiny_causal), device="cpu")
    prompts = [student.tokenizer.encode("The sun is"), student.tokenizer.encode("Water boils")]
    written = student_continuations(
        student.model, student.tokenizer, student.kind, prompts, max_new_tokens=4, temperature=1.0, seeds=[0, 1]
    )
    samples = token_batch(list(zip(prompts, written)), student.kind, student.tokenizer.pad_token_id)
    batch = StudentBatch(torch.zeros(2, dtype=torch.long), samples=samples)
    objective = StudentObjectives(student.model, student.kind, weights=TermWeights({"answer": 1.0, "onpolicy_kd": 1.0}))
    parts = objective(batch, teacher_states(student.model, student.kind, None, batch, True, []))
    parts["loss"].backward()
    assert float(parts["loss"].detach()) == pytest.approx(0.0, abs=1e-6) and STUDENT_SAMPLES not in parts
    assert all(float(p.grad.abs().max()) < 1e-5 for p in student.model.parameters() if p.grad is not None)
