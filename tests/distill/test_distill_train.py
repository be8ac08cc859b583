"""Training: every objective and student kind learns, the answer objective trains exactly what
evaluation scores, LoRA trains only adapters, resume follows the same trajectory, NaN stops.

The questions and rationales come from the generated ARC fixture (`tests/fixtures/arc`: AI2 ARC
JSON Lines questions in TinyLLM's folder layout with TinyLLM-shaped rationale files), so these
tests run without ../shared. Only the check that the rationale objectives learn from TinyLLM's
real rationale files reads ../shared (and skips without it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tinystudent.distill import TrainConfig, TrainingDiverged, train_student
from tinystudent.evaluation import evaluate_model, score_choices
from tinystudent.evaluation.prompts import choice_context, choice_continuations
from tinystudent.models import load_model
from tinystudent.models.requests import ChoiceRequest

FIXTURE_ARC = Path(__file__).resolve().parents[1] / "fixtures" / "arc"


def arc_questions(folder: Path) -> dict:
    """Eight training questions of an ARC task in TinyLLM's layout that both TinyLLM teachers
    have rationales for, and a disjoint validation set; teacher choice scores favour the gold
    answer."""
    from tinystudent.tasks import load_task
    from tinystudent.teachers import import_tinyllm_rationales

    data = load_task(str(folder))
    rationales = import_tinyllm_rationales(folder, "train")
    train = [ex for ex in data.split("train") if all(ex.id in r for r in rationales.values())][:8]
    valid = data.split("validation")[:8]
    assert len(train) == len(valid) == 8 and len(rationales) == 2
    choice_logprobs = {
        "flan-t5-xl": {
            ex.id: [-0.2 if c == ex.answer else -2.5 - 0.3 * c for c in range(len(ex.choices))] for ex in train
        }
    }
    return {"train": train, "valid": valid, "rationales": rationales, "choice_logprobs": choice_logprobs}


@pytest.fixture(scope="module")
def arc():
    """The generated ARC fixture (tests/fixtures/arc); no ../shared needed."""
    return arc_questions(FIXTURE_ARC)


@pytest.fixture(scope="module")
def real_arc(shared_dir):
    """Real ARC-Challenge questions with both TinyLLM teachers' real rationales (../shared)."""
    return arc_questions(shared_dir / "data" / "tinyllm" / "arc")


def config(**changes) -> TrainConfig:
    base = dict(
        steps=8,
        batch_size=4,
        lr=3e-3,
        warmup_ratio=0.0,
        eval_before=False,
        device="cpu",
        max_rationale_tokens=48,
        max_input_tokens=160,
    )
    base.update(changes)
    return TrainConfig(**base)


def falls(history: list[dict], term: str) -> bool:
    values = [h[term] for h in history if term in h]
    return len(values) >= 4 and sum(values[-2:]) / 2 < sum(values[:2]) / 2


def test_config_refuses_unknown_keys():
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(learning_rate_typo=1e-3)
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(weights={"anwser": 1.0})
    with pytest.raises(ValidationError):
        TrainConfig(method="qlora")
    assert TrainConfig(method="lora").learning_rate == 2e-4


CASES = [
    ("tiny_causal", "answer", {}),
    ("tiny_causal", "rationale:flan-t5-xl", {"rationale": 1.0}),
    ("tiny_causal", "choice_kd:flan-t5-xl", {"choice_kd": 1.0}),
    ("tiny_causal", "logit_kd", {"answer": 0.0, "logit_kd": 1.0}),
    ("tiny_causal", "hidden", {"answer": 0.0, "hidden": 1.0}),
    ("tiny_seq2seq", "answer", {}),
    ("tiny_seq2seq", "rationale:llama-2-chat-7b", {"rationale": {"llama-2-chat-7b": 1.0}}),
    ("tiny_seq2seq", "choice_kd:flan-t5-xl", {"choice_kd": 1.0}),
    ("tiny_seq2seq", "logit_kd", {"answer": 0.0, "logit_kd": 1.0}),
    ("tiny_encoder", "answer", {}),
    ("tiny_encoder", "choice_kd:flan-t5-xl", {"choice_kd": 1.0}),
]


@pytest.mark.parametrize("fixture,term,weights", CASES, ids=[f"{c[0][5:]}-{c[1]}" for c in CASES])
def test_each_objective_and_student_kind_learns(fixture, term, weights, arc, request, tmp_path):
    check_objective_learns(fixture, term, weights, arc, request, tmp_path)


RATIONALE_CASES = [c for c in CASES if c[1].startswith("rationale")]


@pytest.mark.parametrize("fixture,term,weights", RATIONALE_CASES, ids=[f"{c[0][5:]}-{c[1]}" for c in RATIONALE_CASES])
def test_rationale_objectives_learn_from_real_tinyllm_rationales(fixture, term, weights, real_arc, request, tmp_path):
    """The same check on real ARC-Challenge questions and TinyLLM's real (long, truncated)
    rationales: needs ../shared."""
    check_objective_learns(fixture, term, weights, real_arc, request, tmp_path)


def check_objective_learns(fixture, term, weights, arc, request, tmp_path):
    from conftest import build_tiny

    student = request.getfixturevalue(fixture)
    teacher = None
    if term in ("logit_kd", "hidden"):  # a different random model with the same tokenizer
        teacher = str(build_tiny(fixture.split("_")[1], tmp_path / "teacher", seed=7))
    # The tiny models' byte-level tokens make a rationale task's lettered choices alone about 150
    # tokens: its prompt needs a larger budget than the answer task's.
    budget = {"max_input_tokens": 320} if term.startswith("rationale") else {}
    result = train_student(
        str(student),
        arc["train"],
        arc["valid"],
        config(weights=weights, **budget),
        tmp_path / "run",
        rationales=arc["rationales"],
        choice_logprobs=arc["choice_logprobs"],
        teacher=teacher,
        task="arc",
    )
    assert falls(result.loss_history, term), [h.get(term) for h in result.loss_history]
    assert falls(result.loss_history, "loss")
    assert result.params == result.trainable_params > 0
    assert result.steps == 8 and result.valid_acc is not None and result.tokens_per_s > 0


@pytest.mark.parametrize("fixture", ["tiny_causal", "tiny_seq2seq"])
def test_answer_loss_is_the_evaluation_score_of_the_gold_choice(fixture, arc, request):
    """The answer objective is exactly -log p(gold continuation | scoring prompt) per token."""
    from tinystudent.distill.data import build_features, token_batch
    from tinystudent.distill.objectives import StudentBatch, StudentObjectives

    loaded = load_model(str(request.getfixturevalue(fixture)), device="cpu")
    examples = arc["train"][:4]
    features, _ = build_features(
        examples,
        loaded.tokenizer,
        kind=loaded.kind,
        style="arc",
        rationales={},
        choice_logprobs={},
        rationale_prompt="{question}",
        max_input=10_000,
        max_answer=10_000,
        max_rationale=10_000,
    )
    items = [features[ex.id] for ex in examples]
    batch = StudentBatch(
        torch.tensor([f.gold for f in items]),
        answer=token_batch([(f.prompt, f.choices[f.gold]) for f in items], loaded.kind, loaded.tokenizer.pad_token_id),
    )
    with torch.no_grad():
        loss = StudentObjectives(loaded.model.eval(), loaded.kind)(batch)["answer"]
    requests = [ChoiceRequest(choice_context(ex, "arc"), choice_continuations(ex)) for ex in examples]
    scores = score_choices(loaded.model, loaded.tokenizer, loaded.kind, requests)
    gold_logprob = sum(row[ex.answer] for row, ex in zip(scores, examples))
    n_tokens = sum(len(f.choices[f.gold]) for f in items)
    assert loss.item() == pytest.approx(-gold_logprob / n_tokens, rel=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_causal", "tiny_seq2seq"])
def test_choice_answer_loss_is_cross_entropy_over_the_evaluation_scores(fixture, arc, request, tmp_path):
    """answer_loss=choices: -log softmax(scores)[gold], scores the summed log-likelihoods
    evaluation ranks by; and a run with it learns."""
    import torch.nn.functional as F

    from tinystudent.distill.data import build_features, choice_batch
    from tinystudent.distill.objectives import StudentBatch, StudentObjectives

    student = request.getfixturevalue(fixture)
    loaded = load_model(str(student), device="cpu")
    examples = arc["train"][:4]
    features, _ = build_features(
        examples,
        loaded.tokenizer,
        kind=loaded.kind,
        style="arc",
        rationales={},
        choice_logprobs={},
        rationale_prompt="{question}",
        max_input=10_000,
        max_answer=10_000,
        max_rationale=10_000,
    )
    items = [features[ex.id] for ex in examples]
    batch = StudentBatch(
        torch.tensor([f.gold for f in items]), choices=choice_batch(items, loaded.kind, loaded.tokenizer.pad_token_id)
    )
    with torch.no_grad():
        loss = StudentObjectives(loaded.model.eval(), loaded.kind, answer_loss="choices")(batch)["answer"]
    requests = [ChoiceRequest(choice_context(ex, "arc"), choice_continuations(ex)) for ex in examples]
    scores = score_choices(loaded.model, loaded.tokenizer, loaded.kind, requests)
    expected = sum(
        -F.log_softmax(torch.tensor(row, dtype=torch.float64), 0)[ex.answer].item() for row, ex in zip(scores, examples)
    ) / len(examples)
    assert loss.item() == pytest.approx(expected, rel=1e-4)

    result = train_student(
        str(student), arc["train"], arc["valid"], config(answer_loss="choices"), tmp_path / "run", task="arc"
    )
    assert falls(result.loss_history, "answer"), [h.get("answer") for h in result.loss_history]


def test_lora_trains_only_the_adapters_and_merges(tiny_causal, arc, tmp_path):
    cfg = config(
        method="lora", steps=4, lora={"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "merge": True}
    )
    result = train_student(str(tiny_causal), arc["train"], arc["valid"], cfg, tmp_path / "run", task="arc")
    base = load_model(str(tiny_causal), device="cpu").model
    expected = sum(
        4 * (m.in_features + m.out_features) for name, m in base.named_modules() if name.endswith(("q_proj", "v_proj"))
    )
    assert result.trainable_params == expected
    assert result.params == sum(p.numel() for p in base.parameters())
    adapter = tmp_path / "run" / "best"
    assert (adapter / "adapter_config.json").exists()
    merged = load_model(result.checkpoint, device="cpu")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(
        merged.model(input_ids=ids).logits,
        load_model(str(adapter), device="cpu").model(input_ids=ids).logits,
        rtol=1e-4,
        atol=1e-5,
    )
    assert not torch.allclose(merged.model(input_ids=ids).logits, base(input_ids=ids).logits)
    with pytest.raises(ValueError, match=r"\['qproj'\] match nothing.*q_proj"):
        train_student(
            str(tiny_causal),
            arc["train"],
            arc["valid"],
            config(method="lora", lora={"target_modules": ["q_proj", "qproj"]}),
            tmp_path / "bad",
        )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_killed_run_resumes_on_the_same_trajectory(method, tiny_causal, arc, tmp_path):
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
    whole = train_student(str(tiny_causal), arc["train"], arc["valid"], cfg, tmp_path / "whole", **args)

    def kill(progress):
        if progress["step"] == 5:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train_student(str(tiny_causal), arc["train"], arc["valid"], cfg, tmp_path / "resumed", on_step=kill, **args)
    assert (tmp_path / "resumed" / "checkpoints" / "LATEST").read_text() == "step-0000004"
    resumed = train_student(str(tiny_causal), arc["train"], arc["valid"], cfg, tmp_path / "resumed", **args)
    assert [h["loss"] for h in resumed.loss_history] == [h["loss"] for h in whole.loss_history]
    assert resumed.valid_history == whole.valid_history
    assert resumed.steps == 6


def test_finished_run_is_returned_not_recomputed_and_folders_are_not_mixed(tiny_causal, arc, tmp_path):
    cfg = config(steps=2)
    first = train_student(str(tiny_causal), arc["train"], arc["valid"], cfg, tmp_path / "run", task="arc")
    calls = []
    again = train_student(
        str(tiny_causal), arc["train"], arc["valid"], cfg, tmp_path / "run", task="arc", on_step=calls.append
    )
    assert calls == [] and again.loss_history == first.loss_history
    with pytest.raises(ValueError, match="holds another run"):
        train_student(str(tiny_causal), arc["train"], arc["valid"], config(steps=3), tmp_path / "run", task="arc")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny_causal, arc, tmp_path, monkeypatch):
    from tinystudent.distill import objectives

    original = objectives.StudentObjectives.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        parts = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(objectives.StudentObjectives, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"became nan at step 4.*step-0000002"):
        train_student(
            str(tiny_causal), arc["train"], arc["valid"], config(checkpoint_every=2), tmp_path / "run", task="arc"
        )
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text() == "step-0000002"
    assert not (tmp_path / "run" / "result.json").exists()


def test_best_checkpoint_is_kept_and_measured(tiny_encoder, arc, tmp_path):
    """The kept folder scores, with the evaluation module, exactly the reported accuracies."""
    test = arc["valid"][4:]
    valid = arc["valid"][:4]
    result = train_student(
        str(tiny_encoder),
        arc["train"],
        valid,
        config(steps=6, eval_every=2, eval_before=True),
        tmp_path / "run",
        task="arc",
        test_examples=test,
    )
    accs = [v["acc"] for v in result.valid_history]
    assert result.valid_acc == max(accs) and result.valid_acc_before == accs[0]
    tied = [v for v in result.valid_history if v["acc"] == max(accs)]  # ties: the lower validation loss is kept
    assert result.best_step == min(tied, key=lambda v: v["loss"])["step"]
    kept = load_model(result.checkpoint, device="cpu")
    assert evaluate_model(kept, valid, "arc", "validation").acc == result.valid_acc
    assert evaluate_model(kept, test, "arc", "test").acc == result.test_acc
    info = json.loads((tmp_path / "run" / "best" / "training.json").read_text())
    assert info["step"] == result.best_step


def test_rationales_that_match_no_question_are_refused(tiny_causal, arc, tmp_path):
    with pytest.raises(ValueError, match="none of its 1 rationales"):
        train_student(
            str(tiny_causal),
            arc["train"],
            arc["valid"],
            config(weights={"rationale": 1.0}),
            tmp_path / "run",
            rationales={"t": {"other-task-1": "text"}},
        )
    with pytest.raises(ValueError, match="also in the validation"):
        train_student(str(tiny_causal), arc["train"], arc["train"][:2], config(), tmp_path / "run2")
    with pytest.raises(ValueError, match="need a teacher"):
        train_student(
            str(tiny_causal), arc["train"], arc["valid"], config(weights={"logit_kd": 1.0}), tmp_path / "run3"
        )


@pytest.mark.slow
def test_same_code_runs_under_distributed_data_parallel(tiny_causal, tmp_path):
    """Two processes (torchrun, gloo on the CPU) of batch 2 follow one process of batch 4."""
    import os
    import subprocess
    import sys

    from tinystudent.tasks import load_task

    script = tmp_path / "ddp.py"
    script.write_text(f"""
import json, os, sys
from tinystudent.distill import TrainConfig, train_student
from tinystudent.tasks import load_task
data = load_task({str(FIXTURE_ARC)!r})
cfg = TrainConfig(steps=3, batch_size=int(sys.argv[2]), lr=3e-3, warmup_ratio=0.0, eval_before=False)
result = train_student({str(tiny_causal)!r}, data.split("train")[:12], data.split("validation")[:4], cfg,
                       sys.argv[1], task="arc")
if os.environ.get("RANK", "0") == "0":
    print("RESULT " + json.dumps([h["loss"] for h in result.loss_history] + [result.epochs]))
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def losses(args):
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        assert line, done.stderr[-3000:]
        return json.loads(line[0][7:])

    two = losses(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(tmp_path / "ddp"),
            "2",
        ]
    )
    data = load_task(str(FIXTURE_ARC))
    one = train_student(
        str(tiny_causal),
        data.split("train")[:12],
        data.split("validation")[:4],
        TrainConfig(steps=3, batch_size=4, lr=3e-3, warmup_ratio=0.0, eval_before=False),
        tmp_path / "single",
        task="arc",
    )
    assert two[-1] == one.epochs == 1.0  # both saw the 12 questions once
    for a, b in zip(two[:-1], one.loss_history):
        assert a == pytest.approx(b["loss"], rel=0.02)


def test_gradient_checkpointing_and_bf16_autocast_train_the_same_model(tiny_causal, arc, tmp_path):
    plain = train_student(str(tiny_causal), arc["train"], arc["valid"], config(steps=3), tmp_path / "plain", task="arc")
    saved = train_student(
        str(tiny_causal),
        arc["train"],
        arc["valid"],
        config(steps=3, gradient_checkpointing=True),
        tmp_path / "checkpointing",
        task="arc",
    )
    for a, b in zip(plain.loss_history, saved.loss_history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    bf16 = train_student(
        str(tiny_causal), arc["train"], arc["valid"], config(steps=3, precision="bf16"), tmp_path / "bf16", task="arc"
    )
    for a, b in zip(plain.loss_history, bf16.loss_history):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.05)


def test_activation_checkpointing_is_switched_on_without_deprecation_warnings(tiny_causal):
    import warnings

    from tinystudent.distill.trainee import enable_activation_checkpointing

    model = load_model(str(tiny_causal), device="cpu").model
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        enable_activation_checkpointing(model)
        on = (
            model.is_activation_checkpointing
            if hasattr(model, "is_activation_checkpointing")
            else model.is_gradient_checkpointing
        )
    assert on


def test_scaled_down_student_matches_the_layers_it_was_copied_from(tiny_causal, tmp_path):
    from tinystudent.distill.trainee import hidden_pairs
    from tinystudent.models.students import scale_down

    student = scale_down(str(tiny_causal), [1], tmp_path / "s")
    small, big = load_model(str(student), device="cpu").model, load_model(str(tiny_causal), device="cpu").model
    # its only layer was the teacher's layer 1; the final (normalised) outputs pair up
    assert hidden_pairs(student, small, big, "causal", None) == [(1, 2)]
    assert hidden_pairs(tiny_causal, big, big, "causal", None) == [(1, 1), (2, 2)]
    with pytest.raises(ValueError, match="outside"):
        hidden_pairs(student, small, big, "causal", [(3, 1)])


def test_run_killed_while_finishing_trains_no_step_again(tiny_causal, arc, tmp_path, monkeypatch):
    from tinystudent.distill import train as train_module

    original = train_module._finish

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while measuring the test split")

    monkeypatch.setattr(train_module, "_finish", killed)
    with pytest.raises(KeyboardInterrupt):
        train_student(
            str(tiny_causal),
            arc["train"],
            arc["valid"],
            config(steps=3, checkpoint_every=2),
            tmp_path / "run",
            task="arc",
        )
    monkeypatch.setattr(train_module, "_finish", original)
    steps = []
    result = train_student(
        str(tiny_causal),
        arc["train"],
        arc["valid"],
        config(steps=3, checkpoint_every=2),
        tmp_path / "run",
        task="arc",
        on_step=steps.append,
    )
    assert steps == [] and result.steps == 3 and len(result.loss_history) == 3
