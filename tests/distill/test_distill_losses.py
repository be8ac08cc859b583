"""Distillation losses: zero for identical distributions, non-negative, equal to a float64
reference written independently here, chunking changes nothing, vocabularies are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinystudent.distill import (
    check_vocab,
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


def _softmax64(logits: np.ndarray, t: float) -> np.ndarray:
    z = logits.astype(np.float64) / t
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _kl64(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(-1)


def reference(student: np.ndarray, teacher: np.ndarray, divergence: str, t: float, beta: float = 0.5):
    p, q = _softmax64(teacher, t), _softmax64(student, t)
    if divergence == "forward_kl":
        value = _kl64(p, q)
    elif divergence == "reverse_kl":
        value = _kl64(q, p)
    else:
        m = beta * p + (1 - beta) * q
        value = beta * _kl64(p, m) + (1 - beta) * _kl64(q, m)
    return value * t * t


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, 50, generator=g) * 3, torch.randn(7, 50, generator=g) * 3


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_divergences_match_float64_reference(logits, divergence, temperature):
    student, teacher = logits
    ours = token_divergence(student, teacher, divergence, temperature, beta=0.3)
    expected = reference(student.numpy(), teacher.numpy(), divergence, temperature, beta=0.3)
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn", [forward_kl, reverse_kl, generalized_jsd])
def test_divergences_zero_for_identical_and_non_negative(logits, fn):
    student, teacher = logits
    assert torch.allclose(fn(student, student.clone(), 2.0), torch.zeros(7), atol=1e-5)
    # shifting every logit of a row changes nothing: same distribution
    assert torch.allclose(fn(student, student + 4.0, 1.0), torch.zeros(7), atol=1e-5)
    assert (fn(student, teacher, 1.0) >= 0).all()
    assert (fn(student, teacher, 1.0) > 1e-3).all()


def test_jsd_is_symmetric_at_half_and_bounded(logits):
    student, teacher = logits
    a = generalized_jsd(student, teacher, 1.0, 0.5)
    b = generalized_jsd(teacher, student, 1.0, 0.5)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a <= np.log(2) + 1e-6).all()
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(student, teacher, 1.0, 1.0)


def test_choice_kd_ignores_padded_choices_and_matches_reference():
    student = torch.tensor([[-1.0, -2.0, -0.5, PAD_SCORE], [-3.0, -1.0, -2.0, -2.5]], requires_grad=True)
    teacher = torch.tensor([[-0.2, -3.0, -1.0, PAD_SCORE], [-1.0, -1.0, -4.0, -0.1]])
    loss = choice_kd_loss(student, teacher, temperature=2.0)
    expected_first = reference(student[0, :3].detach().numpy(), teacher[0, :3].numpy(), "forward_kl", 2.0)
    expected_second = reference(student[1].detach().numpy(), teacher[1].numpy(), "forward_kl", 2.0)
    np.testing.assert_allclose(loss.detach().numpy(), [expected_first, expected_second], rtol=1e-5)
    loss.sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad[0, 3] == 0


def test_mutual_kl_zero_for_identical_peers_and_detached():
    scores = torch.randn(5, 4, requires_grad=True)
    peer = scores.detach().clone().requires_grad_(True)
    assert torch.allclose(mutual_kl(scores, [peer], 2.0), torch.zeros(5), atol=1e-6)
    other = torch.randn(5, 4, requires_grad=True)
    loss = mutual_kl(scores, [other, peer], 2.0)
    expected = (forward_kl(scores, other, 2.0) + forward_kl(scores, peer, 2.0)) / 2
    assert torch.allclose(loss, expected)
    loss.sum().backward()
    assert other.grad is None and peer.grad is None and scores.grad is not None


def test_hidden_state_loss_zero_for_same_direction_and_refuses_widths():
    h = torch.randn(6, 16)
    assert hidden_state_loss([h], [h * 3.0]).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_state_loss([h], [-h]).item() == pytest.approx(4.0, abs=1e-5)
    with pytest.raises(ValueError, match="equal widths"):
        hidden_state_loss([h], [torch.randn(6, 8)])


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_chunked_equals_unchunked_values_and_gradients(divergence):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 97, bias=False)
    teacher_head = torch.nn.Linear(16, 97, bias=False).requires_grad_(False)
    hidden = torch.randn(37, 16, requires_grad=True)
    teacher_hidden = torch.randn(37, 16)
    targets = torch.randint(0, 97, (37,))
    results = []
    for chunk in (None, 5):
        hidden.grad, head.weight.grad = None, None
        lp, kd = chunked_token_losses(
            hidden,
            targets,
            head,
            teacher_hidden=teacher_hidden,
            teacher_head=teacher_head,
            divergence=divergence,
            temperature=2.0,
            chunk_tokens=chunk,
        )
        (-lp.mean() + kd.mean()).backward()
        results.append((lp.detach(), kd.detach(), hidden.grad.clone(), head.weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the target log-probabilities are those of a plain log-softmax
    expected = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(results[0][0], expected.detach())


def test_chunked_kd_compares_only_aligned_rows():
    torch.manual_seed(1)
    head, teacher_head = torch.nn.Linear(8, 20), torch.nn.Linear(8, 24)
    hidden, teacher_hidden = torch.randn(4, 8), torch.randn(4, 8)
    _, kd = chunked_token_losses(
        hidden,
        torch.zeros(4, dtype=torch.long),
        head,
        teacher_hidden=teacher_hidden,
        teacher_head=teacher_head,
        kd_vocab=20,
        chunk_tokens=2,
    )
    expected = forward_kl(head(hidden)[:, :20], teacher_head(teacher_hidden)[:, :20], 1.0)
    torch.testing.assert_close(kd, expected.detach())


# --- vocabulary compatibility ------------------------------------------------------------------


def _tiny_lm(vocab_rows: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_rows,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def test_vocab_mismatch_is_refused_naming_both_sizes():
    from conftest import byte_level_tokenizer

    student_tok, teacher_tok = byte_level_tokenizer(320), byte_level_tokenizer(300)
    student, teacher = _tiny_lm(len(student_tok), student_tok), _tiny_lm(len(teacher_tok), teacher_tok)
    with pytest.raises(ValueError) as err:
        check_vocab(student, student_tok, teacher, teacher_tok, "small", "big")
    message = str(err.value)
    assert str(len(student_tok)) in message and str(len(teacher_tok)) in message
    assert "choice_kd" in message


def test_padded_output_rows_are_aligned_and_logged(capsys):
    from conftest import byte_level_tokenizer

    tok = byte_level_tokenizer(320)
    student, teacher = _tiny_lm(len(tok), tok), _tiny_lm(len(tok) + 64, tok)  # Qwen-style padding rows
    alignment = check_vocab(student, tok, teacher, tok, "student", "teacher")
    assert alignment.size == len(tok) and alignment.trimmed
    assert f"{len(tok) + 64} output rows" in capsys.readouterr().err
    too_small = _tiny_lm(len(tok) - 10, tok)
    with pytest.raises(ValueError, match=f"{len(tok) - 10}"):
        check_vocab(too_small, tok, teacher, tok)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_fused_head_loss_equals_the_per_token_path(divergence):
    """Gradients worked out in forward (fused) equal autograd through the plain computation."""
    from tinystudent.distill.fused import fused_head_loss

    torch.manual_seed(2)
    head = torch.nn.Linear(16, 97, bias=True)
    teacher_head = torch.nn.Linear(16, 101, bias=False).requires_grad_(False)
    hidden = torch.randn(29, 16, requires_grad=True)
    teacher_hidden = torch.randn(29, 16)
    targets = torch.randint(0, 97, (29,))
    grads = []
    for fused in (True, False):
        hidden.grad = head.weight.grad = head.bias.grad = None
        if fused:
            loss, lp, kd = fused_head_loss(
                hidden,
                head,
                targets,
                ce_scale=0.3,
                teacher_hidden=teacher_hidden,
                teacher_head=teacher_head,
                kd_scale=0.7,
                kd_vocab=97,
                divergence=divergence,
                temperature=2.0,
                chunk_tokens=6,
            )
        else:
            lp, kd = chunked_token_losses(
                hidden,
                targets,
                head,
                teacher_hidden=teacher_hidden,
                teacher_head=teacher_head,
                kd_vocab=97,
                divergence=divergence,
                temperature=2.0,
                chunk_tokens=None,
            )
            loss = -0.3 * lp.sum() + 0.7 * kd.sum()
        (2.5 * loss).backward()
        grads.append(
            (
                loss.detach(),
                lp.detach(),
                kd.detach(),
                hidden.grad.clone(),
                head.weight.grad.clone(),
                head.bias.grad.clone(),
            )
        )
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_head_loss_with_a_frozen_output_layer():
    """Under LoRA the output layer is frozen: no gradient for it, the same one for the hidden states."""
    from tinystudent.distill.fused import fused_head_loss

    torch.manual_seed(3)
    head = torch.nn.Linear(8, 40, bias=False).requires_grad_(False)
    hidden = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 40, (11,))
    loss, _, _ = fused_head_loss(hidden, head, targets, ce_scale=1 / 11, chunk_tokens=4)
    loss.backward()
    expected = torch.autograd.grad(-torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).mean(), hidden)[0]
    torch.testing.assert_close(hidden.grad, expected)
    assert head.weight.grad is None
