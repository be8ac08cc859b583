"""Properties of the distillation losses on random logits (Hypothesis), the laws every
implementation must obey whatever the inputs: divergences are non-negative and zero only for the
same distribution; reverse KL is forward KL with the roles swapped; the JSD is symmetric under
beta <-> 1 - beta and bounded by the entropy of its mixing weights (log 2 at beta = 0.5) and by
beta(1 - beta) times the symmetric KL; temperature scaling is exactly T^2 times the divergence of
the scaled logits; padded choices change nothing; the chunked and fused token losses equal the
plain computation, values and gradients.

Logits are drawn as float32 arrays of any shape up to 6 x 40 with values up to +-60, so nearly
one-hot distributions (where float32 underflows) are covered, not only well-spread ones.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinystudent.distill.fused import fused_head_loss
from tinystudent.distill.losses import (
    choice_kd_loss,
    chunked_token_losses,
    forward_kl,
    generalized_jsd,
    hidden_state_loss,
    mutual_kl,
    reverse_kl,
    token_divergence,
)
from tinystudent.models.heads import PAD_SCORE

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIVERGENCES = ["forward_kl", "reverse_kl", "jsd"]
LOGIT = st.floats(-60, 60, allow_nan=False, allow_infinity=False, width=32)
temperatures = st.sampled_from([0.5, 1.0, 2.0, 4.0])
betas = st.floats(0.05, 0.95)


@st.composite
def logit_pairs(draw, max_rows: int = 6, max_vocab: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Two [rows, vocab] float32 logit tensors of the same shape."""
    shape = (draw(st.integers(1, max_rows)), draw(st.integers(2, max_vocab)))
    student = draw(hnp.arrays(np.float32, shape, elements=LOGIT))
    teacher = draw(hnp.arrays(np.float32, shape, elements=LOGIT))
    return torch.from_numpy(student), torch.from_numpy(teacher)


def tolerance(t: float) -> float:
    """float32 rounding of log-softmax over logits up to 60 / t, scaled by T^2 like the loss."""
    return 2e-4 * max(1.0, t * t)


def _kl64(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(-1)


def _softmax64(logits: torch.Tensor, t: float) -> np.ndarray:
    z = logits.double().numpy() / t
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@SETTINGS
@given(logit_pairs(), temperatures, st.sampled_from(DIVERGENCES), betas)
def test_divergences_are_non_negative_and_match_a_float64_reference(pair, t, divergence, beta):
    student, teacher = pair
    value = token_divergence(student, teacher, divergence, t, beta)
    assert value.shape == (student.shape[0],) and torch.isfinite(value).all()
    assert (value >= -tolerance(t)).all(), value
    p, q = _softmax64(teacher, t), _softmax64(student, t)
    if divergence == "forward_kl":
        expected = _kl64(p, q)
    elif divergence == "reverse_kl":
        expected = _kl64(q, p)
    else:
        m = beta * p + (1 - beta) * q
        expected = beta * _kl64(p, m) + (1 - beta) * _kl64(q, m)
    np.testing.assert_allclose(value.double().numpy(), expected * t * t, rtol=1e-3, atol=tolerance(t))


@SETTINGS
@given(logit_pairs(), temperatures, st.sampled_from(DIVERGENCES), st.floats(-30, 30, width=32))
def test_divergences_are_zero_for_the_same_distribution(pair, t, divergence, shift):
    logits, _ = pair
    # adding a constant to every logit of a row leaves its distribution unchanged
    for other in (logits.clone(), logits + shift):
        value = token_divergence(logits, other, divergence, t)
        assert torch.allclose(value, torch.zeros_like(value), atol=tolerance(t)), value


@SETTINGS
@given(logit_pairs(), temperatures)
def test_reverse_kl_is_forward_kl_with_the_roles_swapped(pair, t):
    student, teacher = pair
    torch.testing.assert_close(reverse_kl(student, teacher, t), forward_kl(teacher, student, t))


@SETTINGS
@given(logit_pairs(), temperatures, betas)
def test_jsd_is_symmetric_and_bounded(pair, t, beta):
    student, teacher = pair
    jsd = generalized_jsd(student, teacher, t, beta)
    mirrored = generalized_jsd(teacher, student, t, 1 - beta)
    torch.testing.assert_close(jsd, mirrored, rtol=1e-4, atol=tolerance(t))
    # the JSD is the information the mixture's label carries: at most the label's entropy H(beta)
    entropy = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
    assert (jsd <= entropy * t * t + tolerance(t)).all(), (jsd, entropy)
    # KL(P || M) <= (1 - beta) KL(P || Q) and KL(Q || M) <= beta KL(Q || P) (convexity of KL)
    both_kl = forward_kl(student, teacher, t) + reverse_kl(student, teacher, t)
    assert (jsd <= beta * (1 - beta) * both_kl + tolerance(t)).all()


@SETTINGS
@given(logit_pairs())
def test_symmetric_jsd_is_bounded_by_log_2(pair):
    student, teacher = pair
    jsd = generalized_jsd(student, teacher, 1.0, 0.5)
    torch.testing.assert_close(jsd, generalized_jsd(teacher, student, 1.0, 0.5), rtol=1e-4, atol=1e-5)
    assert (jsd <= math.log(2) + 1e-5).all()


@SETTINGS
@given(logit_pairs(), temperatures, st.sampled_from(DIVERGENCES))
def test_temperature_divides_the_logits_and_scales_by_its_square(pair, t, divergence):
    student, teacher = pair
    scaled = token_divergence(student, teacher, divergence, t)
    unscaled = token_divergence(student / t, teacher / t, divergence, 1.0)
    torch.testing.assert_close(scaled, unscaled * t * t, rtol=1e-4, atol=tolerance(t))


@SETTINGS
@given(logit_pairs(max_vocab=6), st.integers(1, 4), temperatures)
def test_padded_choices_change_nothing(pair, pads, t):
    """A question with fewer choices is padded with PAD_SCORE in both score tables."""
    student, teacher = pair
    student = student.clone().requires_grad_(True)
    padding = torch.full((student.shape[0], pads), PAD_SCORE)
    padded = torch.cat([student, padding], 1)
    loss = choice_kd_loss(padded, torch.cat([teacher, padding], 1), t)
    torch.testing.assert_close(loss, choice_kd_loss(student, teacher, t), rtol=1e-4, atol=tolerance(t))
    loss.sum().backward()
    assert torch.isfinite(student.grad).all()
    peers = [torch.cat([teacher, padding], 1), torch.cat([teacher.flip(0), padding], 1)]
    expected = (forward_kl(padded, peers[0], t) + forward_kl(padded, peers[1], t)) / 2
    torch.testing.assert_close(mutual_kl(padded, peers, t), expected)


STATES = hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 12)), elements=st.floats(-10, 10, width=32))


@SETTINGS
@given(STATES, st.data(), st.floats(0.1, 10))
def test_hidden_state_loss_is_bounded_and_ignores_scale(states, data, scale):
    """The mean squared distance of unit vectors: in [0, 4], 0 for the same direction, 4 for the
    opposite one, whatever each vector's length."""
    other = data.draw(hnp.arrays(np.float32, states.shape, elements=st.floats(-10, 10, width=32)))
    states, other = torch.from_numpy(states), torch.from_numpy(other)
    assume(states.norm(dim=-1).min() > 1e-2 and other.norm(dim=-1).min() > 1e-2)
    loss = hidden_state_loss([states], [other])
    assert -1e-6 <= loss.item() <= 4 + 1e-5
    torch.testing.assert_close(hidden_state_loss([states * scale], [other]), loss, rtol=1e-4, atol=1e-5)
    assert abs(hidden_state_loss([states], [states * scale]).item()) < 1e-5
    assert hidden_state_loss([states], [-scale * states]).item() == pytest.approx(4.0, abs=1e-4)


@st.composite
def token_problems(draw):
    """Hidden states, targets, output layers and loss settings of a token-level loss."""
    rows, width = draw(st.integers(1, 24)), draw(st.integers(2, 12))
    vocab, teacher_vocab = draw(st.integers(2, 40)), draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))
    bias = draw(st.booleans())
    head = torch.nn.Linear(width, vocab, bias=bias)
    teacher_head = torch.nn.Linear(width, teacher_vocab, bias=draw(st.booleans())).requires_grad_(False)
    with torch.no_grad():
        for layer in (head, teacher_head):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * scale)
            if layer.bias is not None:
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
    return {
        "hidden": torch.randn(rows, width, generator=g),
        "teacher_hidden": torch.randn(rows, width, generator=g),
        "targets": torch.randint(0, vocab, (rows,), generator=g),
        "head": head,
        "teacher_head": teacher_head if draw(st.booleans()) else None,
        "kd_vocab": min(vocab, teacher_vocab),
        "divergence": draw(st.sampled_from(DIVERGENCES)),
        "temperature": draw(temperatures),
        "beta": draw(betas),
        "chunk": draw(st.integers(1, 30)),
        "ce_scale": draw(st.floats(0.01, 3)),
        "kd_scale": draw(st.floats(0.0, 3)),
    }


def _reference(problem: dict, chunk: int | None, fused: bool):
    """(loss, target log-probs, divergences, grad of hidden, grad of the head's weight and bias)."""
    head, teacher_head = problem["head"], problem["teacher_head"]
    hidden = problem["hidden"].clone().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    teacher_hidden = problem["teacher_hidden"] if teacher_head is not None else None
    kd_scale = problem["kd_scale"] if teacher_head is not None else 0.0
    settings_ = dict(
        kd_vocab=problem["kd_vocab"],
        divergence=problem["divergence"],
        temperature=problem["temperature"],
        beta=problem["beta"],
    )
    if fused:
        loss, logprobs, kd = fused_head_loss(
            hidden,
            head,
            problem["targets"],
            ce_scale=problem["ce_scale"],
            teacher_hidden=teacher_hidden,
            teacher_head=teacher_head,
            kd_scale=kd_scale,
            chunk_tokens=chunk,
            **settings_,
        )
    else:
        logprobs, kd = chunked_token_losses(
            hidden,
            problem["targets"],
            head,
            teacher_hidden=teacher_hidden,
            teacher_head=teacher_head,
            chunk_tokens=chunk,
            **settings_,
        )
        loss = -problem["ce_scale"] * logprobs.sum() + kd_scale * kd.sum()
    (1.7 * loss).backward()
    grads = [hidden.grad, head.weight.grad] + ([head.bias.grad] if head.bias is not None else [])
    return [loss.detach(), logprobs.detach(), kd.detach(), *[g.clone() for g in grads]]


def _assert_same(got: list, want: list) -> None:
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4 * max(1.0, float(b.abs().max())))


@SETTINGS
@given(token_problems())
def test_chunked_token_losses_equal_the_unchunked_computation(problem):
    _assert_same(_reference(problem, problem["chunk"], fused=False), _reference(problem, None, fused=False))


@SETTINGS
@given(token_problems())
def test_fused_output_layer_loss_equals_the_unfused_computation(problem):
    _assert_same(_reference(problem, problem["chunk"], fused=True), _reference(problem, None, fused=False))
