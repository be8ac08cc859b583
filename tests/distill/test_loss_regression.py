"""Stored losses: the same tiny model, data and seed must give the same numbers, step by step.

Like torchtune's recipe tests: a 2-layer, 32-wide Llama (`tests/fixtures/tiny-llama`, weights
drawn by `tests/fixtures/make_fixtures.py`, not by transformers) trains for a few steps on the
fixture ARC questions and TinyLLM-shaped rationales, and every loss term and the gradient norm of
every step is compared with `tests/fixtures/loss_regression.json` to a relative 1e-4. The loss
functions themselves are also checked on fixed random tensors. Any change to how a loss is
computed (a term, a mask, a reduction, a temperature, the fused output layer's gradient, the
prompt the answer loss is taken on, the learning-rate schedule) changes these numbers.

When a change is meant to change the numbers, regenerate them and commit the file with it:

    TINYSTUDENT_REGENERATE_LOSSES=1 .venv/bin/python -m pytest -q tests/distill/test_loss_regression.py

(the tests then write the file and skip). Review the diff of the JSON: the first step's terms
should move only where the change says they should.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tinystudent.distill import TrainConfig, train_student
from tinystudent.distill.losses import (
    choice_kd_loss,
    chunked_token_losses,
    forward_kl,
    generalized_jsd,
    hidden_state_loss,
    mutual_kl,
    reverse_kl,
)
from tinystudent.models.heads import PAD_SCORE
from tinystudent.tasks import load_task
from tinystudent.teachers import import_tinyllm_rationales

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_LLAMA = FIXTURES / "tiny-llama"
STORED = FIXTURES / "loss_regression.json"
REGENERATE = os.environ.get("TINYSTUDENT_REGENERATE_LOSSES") == "1"
RTOL, ATOL = 1e-4, 1e-6


def _stored() -> dict:
    return json.loads(STORED.read_text()) if STORED.exists() else {}


def check_or_store(name: str, values: dict) -> None:
    """Compare `values` (key -> number or list of numbers) with the stored ones, or store them
    when regenerating."""
    if REGENERATE:
        stored = _stored()
        import transformers

        stored["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
        stored[name] = values
        STORED.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {name} in {STORED}")
    stored = _stored().get(name)
    assert stored is not None, f"{STORED} has no {name!r}; run with TINYSTUDENT_REGENERATE_LOSSES=1"
    missing = sorted(set(stored) - set(values))
    assert not missing, f"{name}: {missing} are no longer computed"  # new keys (metrics) are allowed
    differences = []
    for key in sorted(stored):
        got, want = torch.tensor(values[key], dtype=torch.float64), torch.tensor(stored[key], dtype=torch.float64)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=RTOL, atol=ATOL):
            differences.append(f"{key}: stored {stored[key]}, now {values[key]}")
    assert not differences, f"{name} changed (regenerate only if meant):\n" + "\n".join(differences)


def _rows(tensor: torch.Tensor) -> list[float]:
    return [float(f"{float(x):.9g}") for x in tensor.detach().reshape(-1)]


def test_loss_functions_on_fixed_tensors_match_the_stored_values():
    g = torch.Generator().manual_seed(1234)
    student, teacher = torch.randn(5, 23, generator=g) * 3, torch.randn(5, 23, generator=g) * 3
    scores = torch.randn(4, 4, generator=g)
    scores[0, 3] = PAD_SCORE
    teacher_scores = torch.randn(4, 4, generator=g)
    teacher_scores[0, 3] = PAD_SCORE
    peer = torch.randn(4, 4, generator=g)
    states = [torch.randn(6, 16, generator=g) for _ in range(4)]
    head_weight, teacher_weight = torch.randn(29, 16, generator=g) * 0.3, torch.randn(29, 16, generator=g) * 0.3
    hidden, teacher_hidden = torch.randn(11, 16, generator=g), torch.randn(11, 16, generator=g)
    targets = torch.randint(0, 29, (11,), generator=g)

    head, teacher_head = torch.nn.Linear(16, 29, bias=False), torch.nn.Linear(16, 29, bias=False)
    with torch.no_grad():
        head.weight.copy_(head_weight)
        teacher_head.weight.copy_(teacher_weight)
    hidden.requires_grad_(True)
    logprobs, kd = chunked_token_losses(
        hidden,
        targets,
        head,
        teacher_hidden=teacher_hidden,
        teacher_head=teacher_head,
        divergence="jsd",
        temperature=2.0,
        chunk_tokens=4,
    )
    (-logprobs.sum() + 0.5 * kd.sum()).backward()
    check_or_store(
        "loss_functions",
        {
            "forward_kl_t1": _rows(forward_kl(student, teacher, 1.0)),
            "forward_kl_t2": _rows(forward_kl(student, teacher, 2.0)),
            "reverse_kl_t2": _rows(reverse_kl(student, teacher, 2.0)),
            "jsd_beta0.3_t1.5": _rows(generalized_jsd(student, teacher, 1.5, 0.3)),
            "choice_kd_t2_padded": _rows(choice_kd_loss(scores, teacher_scores, 2.0)),
            "mutual_kl_t1": _rows(mutual_kl(scores, [peer, teacher_scores], 1.0)),
            "hidden_state": _rows(hidden_state_loss(states[:2], states[2:])),
            "chunked_target_logprobs": _rows(logprobs),
            "chunked_jsd_t2": _rows(kd),
            "chunked_grad_hidden_row0": _rows(hidden.grad[0]),
            "chunked_grad_head_norm": _rows(head.weight.grad.norm()),
        },
    )


@pytest.fixture(scope="module")
def arc() -> dict:
    data = load_task(str(FIXTURES / "arc"))
    train = data.split("train")[:12]
    return {
        "train": train,
        "valid": data.split("validation")[:4],
        "rationales": import_tinyllm_rationales(FIXTURES / "arc", "train"),
        "choice_logprobs": {
            "flan-t5-xl": {
                ex.id: [-0.3 if c == ex.answer else -2.0 - 0.25 * c for c in range(len(ex.choices))] for ex in train
            }
        },
    }


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """The fixture model with seeded noise added to every weight: a teacher of the same shape
    and vocabulary (for token-level KD and hidden-state matching), made the same way each time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(TINY_LLAMA, dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    folder = tmp_path_factory.mktemp("teacher") / "tiny-llama-teacher"
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(TINY_LLAMA).save_pretrained(folder)
    return folder


RUNS = {
    # the answer tokens (fused output layer), both teachers' rationales, token-level forward KL
    "tokens_rationale_logit_kd": dict(
        weights={"answer": 1.0, "rationale": {"flan-t5-xl": 0.5, "llama-2-chat-7b": 0.25}, "logit_kd": 0.5},
        logit_kd_divergence="forward_kl",
    ),
    # the choice-level answer loss, choice KD from stored teacher scores, hidden states, JSD
    "choices_choice_kd_hidden_jsd": dict(
        answer_loss="choices",
        weights={"answer": 1.0, "choice_kd": 0.7, "logit_kd": 0.3, "hidden": 0.4},
        logit_kd_divergence="jsd",
        jsd_beta=0.3,
        kd_chunk_tokens=16,
    ),
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_training_losses_match_the_stored_values(run, arc, teacher, tmp_path):
    config = TrainConfig(
        steps=5,
        batch_size=4,
        lr=5e-3,
        warmup_ratio=0.2,
        eval_before=False,
        device="cpu",
        precision="fp32",
        seed=3,
        max_rationale_tokens=32,
        max_input_tokens=192,
        temperature=2.0,
        **RUNS[run],
    )
    result = train_student(
        str(TINY_LLAMA),
        arc["train"],
        arc["valid"],
        config,
        tmp_path / "run",
        rationales=arc["rationales"],
        choice_logprobs=arc["choice_logprobs"],
        teacher=str(teacher),
        task="arc",
    )
    per_term: dict[str, list[float]] = {}
    for entry in result.loss_history:
        for key, value in entry.items():
            if key not in ("step", "lr") and isinstance(value, (int, float)):
                per_term.setdefault(key, []).append(float(f"{float(value):.9g}"))
    assert len(per_term["loss"]) == 5
    check_or_store(f"training/{run}", per_term)
