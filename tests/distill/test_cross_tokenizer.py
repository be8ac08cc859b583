"""Cross-tokenizer and several-teacher token-level KD: `uld_kd` (Universal Logit Distillation,
Boizard et al. 2024) and `logit_kd:A+B` / `uld_kd:A+B`.

The loss is checked by hand on tiny probability vectors, the target rows' alignment on hand-made
pairs, the teachers' mixture against its definition; then a tiny Llama student learns from a
tiny Llama teacher whose byte-level BPE tokenizer has another vocabulary (290 tokens instead of
320), which plain logit_kd refuses, naming uld_kd.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinystudent.distill import TrainConfig, train_student
from tinystudent.distill.data import align_targets, target_places
from tinystudent.distill.losses import (
    chunked_uld_distances,
    forward_kl,
    mean_sorted_target,
    mixture_logits,
    uld_distance,
)
from tinystudent.distill.objectives import TeacherStates, mixed_states

sys.path.insert(0, str(Path(__file__).parent))
from test_training_offline import falls, load_fixture_task  # noqa: E402


def tiny_llama(path: Path, vocab_size: int, seed: int, width: int = 32) -> Path:
    """A 2-layer random Llama with a byte-level BPE tokenizer of `vocab_size` tokens."""
    from conftest import byte_level_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    path.mkdir(parents=True, exist_ok=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def arc() -> dict:
    return load_fixture_task("arc")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crosstok")
    return {
        "student": tiny_llama(root / "student", 320, seed=0),
        "same": tiny_llama(root / "same", 320, seed=5),  # the student's tokenizer
        "other": tiny_llama(root / "other", 290, seed=3),  # another vocabulary
    }


def config(**changes) -> TrainConfig:
    base = dict(steps=6, batch_size=8, lr=1e-2, warmup_ratio=0.0, eval_before=False, device="cpu", precision="fp32")
    return TrainConfig(**{**base, "log_every": 1, **changes})


# --- the loss ------------------------------------------------------------------------------------


def test_uld_distance_by_hand():
    """Student (0.2, 0.5, 0.3) sorts to (0.5, 0.3, 0.2); teacher (0.1, 0.9) to (0.9, 0.1), padded
    with a zero: |0.5 - 0.9| + |0.3 - 0.1| + |0.2 - 0| = 0.8."""
    student = torch.tensor([[0.2, 0.5, 0.3]]).log()
    teacher = torch.tensor([[0.1, 0.9]]).log()
    target = mean_sorted_target([teacher], [1.0], 1.0)
    assert torch.allclose(target, torch.tensor([[0.9, 0.1]]))
    assert uld_distance(student, target).item() == pytest.approx(0.8, abs=1e-6)
    # The same distribution under another token order is at distance 0: only shapes are compared.
    assert uld_distance(torch.tensor([[0.9, 0.1, 0.0]]).clamp_min(1e-30).log(), target).item() == pytest.approx(
        0.0, abs=1e-6
    )
    # Temperature 2 softens both before sorting.
    soft = F.softmax(student / 2, -1).sort(-1, descending=True).values
    expected = (soft - F.pad(F.softmax(teacher / 2, -1).sort(-1, descending=True).values, (0, 1))).abs().sum()
    assert uld_distance(student, mean_sorted_target([teacher], [1.0], 2.0), 2.0).item() == pytest.approx(
        float(expected)
    )


def test_several_ulds_teachers_average_their_sorted_vectors():
    a, b = torch.tensor([[0.7, 0.3]]).log(), torch.tensor([[0.2, 0.2, 0.6]]).log()
    target = mean_sorted_target([a, b], [0.75, 0.25], 1.0)
    assert torch.allclose(target, torch.tensor([[0.75 * 0.7 + 0.25 * 0.6, 0.75 * 0.3 + 0.25 * 0.2, 0.25 * 0.2]]))


def test_chunked_uld_distances_equal_the_unchunked_ones_and_their_gradients():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 8, generator=g, requires_grad=True)
    head, teacher_head = torch.nn.Linear(8, 13), torch.nn.Linear(6, 11)
    teacher_hidden = torch.randn(9, 6, generator=g)
    chunked = chunked_uld_distances(
        hidden, head, [teacher_hidden], [teacher_head], [1.0], temperature=2.0, chunk_tokens=4
    )
    (grad,) = torch.autograd.grad(chunked.sum(), hidden)
    target = mean_sorted_target([teacher_head(teacher_hidden).detach()], [1.0], 2.0)
    whole = uld_distance(head(hidden), target, 2.0)
    (grad_whole,) = torch.autograd.grad(whole.sum(), hidden)
    assert torch.allclose(chunked, whole, atol=1e-6) and torch.allclose(grad, grad_whole, atol=1e-6)


def test_the_teachers_mixture_is_the_weighted_mean_of_their_distributions():
    """Softmax of the mixture's logits at T is `sum_k w_k softmax(z_k / T)`, checked on a small
    tensor; its forward KL has the gradient of the weighted sum of the teachers' KLs."""
    za, zb = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 3.0]])
    mixed = mixture_logits([za, zb], [0.25, 0.75], 2.0)
    expected = 0.25 * F.softmax(za / 2, -1) + 0.75 * F.softmax(zb / 2, -1)
    assert torch.allclose(F.softmax(mixed / 2, -1), expected, atol=1e-6)
    assert torch.allclose(mixture_logits([za], [1.0], 2.0).softmax(-1), (za).softmax(-1), atol=1e-6)
    student = torch.tensor([[0.5, 0.5, 0.1]], requires_grad=True)
    (g_mix,) = torch.autograd.grad(forward_kl(student, mixed, 2.0).sum(), student)
    both = 0.25 * forward_kl(student, za, 2.0) + 0.75 * forward_kl(student, zb, 2.0)
    (g_sum,) = torch.autograd.grad(both.sum(), student)
    assert torch.allclose(g_mix, g_sum, atol=1e-6)


def test_mixed_states_put_the_teachers_side_by_side():
    head_a, head_b = torch.nn.Linear(4, 5), torch.nn.Linear(6, 7)
    rows_a, rows_b = torch.randn(3, 4), torch.randn(3, 6)
    states = {"a": {"answer": TeacherStates(rows_a, head_a)}, "b": {"answer": TeacherStates(rows_b, head_b)}}
    mixed = mixed_states(states, {"a": 1.0, "b": 3.0}, 1.0, 5)["answer"]
    assert mixed.linear is None and mixed.rows.shape == (3, 10)
    expected = 0.25 * head_a(rows_a).softmax(-1) + 0.75 * head_b(rows_b)[:, :5].softmax(-1)
    assert torch.allclose(mixed.head(mixed.rows).softmax(-1), expected, atol=1e-6)
    assert mixed_states({"a": states["a"]}, {"a": 2.0}, 1.0, None) is states["a"]  # one teacher: itself


def test_the_fused_output_layer_takes_the_mixture_as_the_per_token_path_does():
    from tinystudent.distill.fused import fused_head_loss
    from tinystudent.distill.losses import chunked_token_losses
    from tinystudent.distill.objectives import MixedHead

    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(8, 11)
    mixed = MixedHead([torch.nn.Linear(4, 11), torch.nn.Linear(6, 12)], [4, 6], [0.3, 0.7], 2.0, 11)
    teacher_rows, targets = torch.randn(13, 10, generator=g), torch.randint(0, 11, (13,), generator=g)
    found = []
    for fused in (True, False):
        hidden = torch.randn(13, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
        if fused:
            loss, _, kd = fused_head_loss(
                hidden, head, targets, ce_scale=0.5, teacher_hidden=teacher_rows, teacher_head=mixed,
                kd_scale=0.25, temperature=2.0, chunk_tokens=4,
            )  # fmt: skip
        else:
            logprobs, kd = chunked_token_losses(
                hidden, targets, head, teacher_hidden=teacher_rows, teacher_head=mixed, temperature=2.0, chunk_tokens=4
            )
            loss = -0.5 * logprobs.sum() + 0.25 * kd.sum()
        (grad,) = torch.autograd.grad(loss, hidden)
        found.append((loss.detach(), kd.detach(), grad))
    for a, b in zip(*found):
        assert torch.allclose(a, b, atol=1e-5)


# --- aligning the target rows ----------------------------------------------------------------------


@pytest.mark.parametrize("kind,pack", [("causal", False), ("causal", True), ("seq2seq", False)])
def test_target_rows_are_aligned_by_position_along_each_target(kind, pack):
    student = [([1, 2], [3, 4, 5]), ([6], [7]), ([8, 9, 9], [10, 11])]
    teacher = [([1], [3, 4]), None, ([8, 9], [10, 11, 12, 13])]
    places = target_places(student, kind, pack)
    assert sorted(places.tolist()) == [0, 1, 2, 1 << 20, 2 << 20, (2 << 20) + 1]
    student_rows, rows, present = align_targets(student, {"t": teacher}, kind, pack)
    assert present == {"t": [0, 2]}
    # Pair 0: its first 2 targets; pair 1: none (no teacher pair); pair 2: its 2 targets.
    assert sorted(places[student_rows].tolist()) == [0, 1, 2 << 20, (2 << 20) + 1]
    theirs = target_places([teacher[0], teacher[2]], kind, pack)  # type: ignore[list-item]
    matched = theirs[rows["t"]]
    pair = torch.tensor([0, 2])[matched >> 20]
    assert (pair * (1 << 20) + (matched & ((1 << 20) - 1))).tolist() == places[student_rows].tolist()


# --- training ----------------------------------------------------------------------------------------


def test_uld_kd_trains_a_student_from_a_teacher_with_another_tokenizer(models, arc, tmp_path):
    result = train_student(
        str(models["student"]),
        arc["train"],
        [],
        config(weights={"answer": 0.0, "uld_kd": 1.0}),
        tmp_path / "run",
        teacher=str(models["other"]),
        task="arc",
    )
    assert falls(result.loss_history, "uld_kd"), [h["uld_kd"] for h in result.loss_history]


def test_logit_kd_across_tokenizers_is_refused_naming_uld_kd(models, arc, tmp_path):
    with pytest.raises(ValueError, match="uld_kd"):
        train_student(
            str(models["student"]),
            arc["train"],
            [],
            config(weights={"logit_kd": 1.0}),
            tmp_path / "run",
            teacher=str(models["other"]),
        )


def test_logit_kd_from_two_named_teachers_trains_and_unknown_names_are_refused(models, arc, tmp_path):
    teachers = {"a": str(models["same"]), "b": str(models["student"])}
    result = train_student(
        str(models["student"]),
        arc["train"],
        [],
        config(weights={"answer": 0.0, "logit_kd": {"a": 1.0, "b": 3.0}}),
        tmp_path / "run",
        teacher=teachers,
    )
    assert falls(result.loss_history, "logit_kd"), [h["logit_kd"] for h in result.loss_history]
    with pytest.raises(ValueError, match=r"teacher model\(s\) \['c'\] that were not given.*\['a', 'b'\]"):
        train_student(
            str(models["student"]),
            arc["train"],
            [],
            config(weights={"logit_kd": {"c": 1.0}}),
            tmp_path / "run2",
            teacher=teachers,
        )


def test_uld_kd_from_two_teachers_of_different_tokenizers_trains_beside_the_answer(models, arc, tmp_path):
    """Beside the answer's cross-entropy (which it does not replace) and from two teachers of
    different vocabularies at once."""
    result = train_student(
        str(models["student"]),
        arc["train"],
        [],
        config(weights={"answer": 1.0, "uld_kd": {"same": 1.0, "other": 1.0}}),
        tmp_path / "run",
        teacher={"same": str(models["same"]), "other": str(models["other"])},
    )
    assert falls(result.loss_history, "answer")
    assert all(math.isfinite(h["uld_kd"]) and h["uld_kd"] > 0 for h in result.loss_history)


# --- tinystudent train ---------------------------------------------------------------------------------


def test_train_options_name_several_teacher_models():
    from tinystudent.commands.train import objective_weights, teacher_models

    assert teacher_models(["a=/m/a", "b = /m/b"]) == {"a": "/m/a", "b": "/m/b"}
    assert teacher_models(["Qwen/Qwen2.5-7B"]) == {"Qwen/Qwen2.5-7B": "Qwen/Qwen2.5-7B"}
    with pytest.raises(ValueError, match="teacher name 'a' is given twice"):
        teacher_models(["a=/m/a", "a=/m/b"])
    with pytest.raises(ValueError, match="PATH or NAME=PATH"):
        teacher_models(["a="])
    weights = objective_weights("logit_kd:a+b,uld_kd", ["logit_kd.b=3"], [], ["a", "b"])
    assert weights == {"answer": 1.0, "logit_kd": {"a": 1.0, "b": 3.0}, "uld_kd": 1.0}
    assert objective_weights("answer", ["uld_kd.b=2"], ["flan"], ["a", "b"])["uld_kd"] == {"a": 0.0, "b": 2.0}
    with pytest.raises(ValueError, match=r"unknown \['rationale:flan'\].*logit_kd:A\+B"):
        objective_weights("rationale:flan", [])


def test_tinystudent_train_distils_two_named_teacher_models(models, tmp_path):
    import json

    from typer.testing import CliRunner

    from tinystudent.cli import app

    def train(objective: str, out: str):
        fixtures = Path(__file__).resolve().parents[1] / "fixtures"
        args = ["train", "--student", str(models["student"]), "--task", str(fixtures / "arc"), "--objective"]
        args += [objective, "--teacher-model", f"same={models['same']}", "--teacher-model"]
        args += [f"other={models['other']}", "--weight", "uld_kd.other=2", "--steps", "2", "--train-limit", "8"]
        args += ["--batch-size", "4", "--no-test", "--valid-limit", "2", "--device", "cpu", "--out"]
        return CliRunner().invoke(app, [*args, str(tmp_path / out), "--db", str(tmp_path / "db.sqlite"), "--json"])

    result = train("uld_kd:same+other", "run")
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "run" / "run.json").read_text())
    assert stored["config"]["weights"]["uld_kd"] == {"same": 1.0, "other": 2.0}
    assert set(stored["teacher"]) == {"same", "other"}
    refused = train("logit_kd:c", "refused")
    assert refused.exit_code != 0 and "teacher model(s) ['c'] that were not given" in " ".join(refused.output.split())


# --- with on-policy KD ---------------------------------------------------------------------------------


def test_each_teachers_share_of_a_batch_comes_from_the_terms_that_cover_it():
    """logit_kd:a covers the answer and the rationales, onpolicy_kd:b the answer and the student's
    own samples: a alone on the rationales, b alone on the samples, both on the answer, each at its
    term's weight per token; per batch they sum to the token pass's divergence weight."""
    from tinystudent.distill.objectives import StudentObjectives
    from tinystudent.distill.teacher_models import kd_shares
    from tinystudent.distill.terms import TermWeights
    from tinystudent.distill.terms.base import STUDENT_SAMPLES
    from tinystudent.models.batches import TokenBatch

    rows = {"answer": 3, "rationale:t": 2, STUDENT_SAMPLES: 5}
    weights = TermWeights({"logit_kd": {"a": 1.0}, "onpolicy_kd": {"b": 2.0, "c": 0.0}})
    shares = kd_shares(weights, rows)
    assert shares == {
        "answer": pytest.approx({"a": 1 / 5, "b": 2 / 8}),
        "rationale:t": pytest.approx({"a": 1 / 5}),
        STUDENT_SAMPLES: pytest.approx({"b": 2 / 8}),
    }

    def batch(targets: int) -> TokenBatch:
        mask = torch.zeros(1, 10, dtype=torch.bool)
        mask[0, :targets] = True
        return TokenBatch(torch.zeros(1, 10, dtype=torch.long), torch.ones(1, 10, dtype=torch.long), mask)

    batches = {name: batch(n) for name, n in rows.items()}
    scales = StudentObjectives(torch.nn.Linear(2, 2), "causal", weights=weights)._kd_scales(
        batches, dict.fromkeys(batches, TeacherStates(torch.zeros(1), None))
    )
    assert scales == pytest.approx({name: sum(found.values()) for name, found in shares.items()})
    # One number (not resolved per teacher, as recovery gives it) still weights the divergence.
    assert term_weight("logit_kd", TermWeights({"logit_kd": 2.0})) == 2.0


def term_weight(name: str, weights) -> float:
    from tinystudent.distill.terms import term

    return term(name).kd_weight(weights)


def test_onpolicy_kd_learns_from_named_teachers_beside_logit_kd(models, arc, tmp_path):
    onpolicy = dict(onpolicy_max_new_tokens=4, max_input_tokens=160, steps=2, batch_size=4)
    teachers = {"a": str(models["same"]), "b": str(models["student"])}
    mixed = train_student(
        str(models["student"]),
        arc["train"][:8],
        [],
        config(weights={"answer": 0.0, "onpolicy_kd": {"a": 1.0, "b": 3.0}}, onpolicy_lambda=1.0, **onpolicy),
        tmp_path / "mixed",
        teacher=teachers,
    )
    assert all(math.isfinite(h["onpolicy_kd"]) and h["onpolicy_kd"] >= 0 for h in mixed.loss_history)
    beside = train_student(
        str(models["student"]),
        arc["train"][:8],
        [],
        config(weights={"logit_kd": {"a": 1.0}, "onpolicy_kd": {"b": 1.0}}, onpolicy_lambda=0.5, **onpolicy),
        tmp_path / "beside",
        teacher=teachers,
    )
    assert all(math.isfinite(h["logit_kd"]) for h in beside.loss_history)
    with pytest.raises(ValueError, match="uld_kd"):  # the student's own tokens: one vocabulary
        train_student(
            str(models["student"]),
            arc["train"][:8],
            [],
            config(weights={"onpolicy_kd": 1.0}, **onpolicy),
            tmp_path / "other",
            teacher=str(models["other"]),
        )


def test_train_names_onpolicy_kds_teacher_models_as_logit_kds():
    from tinystudent.commands.train import objective_weights

    assert objective_weights("onpolicy_kd:a+b", ["onpolicy_kd.b=2"], [], ["a", "b"]) == {
        "answer": 1.0,
        "onpolicy_kd": {"a": 1.0, "b": 2.0},
    }
    assert objective_weights("onpolicy_kd", [], [], ["a"]) == {"answer": 1.0, "onpolicy_kd": 1.0}  # as before
