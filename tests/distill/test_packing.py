"""Batches without waste: packed training rows give the loss unpacked rows give, and both the
training packer and the scoring batcher place every example exactly once."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinystudent.distill.data import SampleStream, token_batch
from tinystudent.evaluation.batching import padding_share, token_batches
from tinystudent.models import load_model
from tinystudent.models.batches import pack_rows


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=60), st.integers(1, 64), st.integers(1, 4000))
def test_token_budget_batches_hold_every_example_once_within_budget(lengths, max_items, max_tokens):
    batches = token_batches(lengths, max_items, max_tokens)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= max_items
        padded = len(batch) * max(lengths[i] for i in batch)
        assert len(batch) == 1 or (padded <= max_tokens and padded - sum(lengths[i] for i in batch) <= 0.1 * padded)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=60))
def test_packed_rows_hold_every_sequence_once_within_the_longest(lengths):
    width = max(lengths)
    rows = pack_rows(lengths, width)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= width for row in rows)
    assert len(rows) <= len(lengths)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=1, max_size=200), st.integers(1, 16), st.integers(0, 5))
def test_grouped_epochs_are_seeded_permutations_of_every_example(lengths, batch_size, seed):
    n = len(lengths)
    grouped = SampleStream(n, seed, lengths, batch_size)
    for epoch in range(2):
        order = grouped.take(epoch * n, n)
        assert sorted(order) == list(range(n))
        assert order == SampleStream(n, seed, lengths, batch_size).take(epoch * n, n)  # a resumed run sees it too


def test_grouped_batches_hold_questions_of_similar_length():
    """BioASQ-like lengths: grouping by length takes most of the padding out of a batch."""
    lengths = [60 + (i * 97) % 440 for i in range(976)]

    def padding(stream: SampleStream) -> float:
        order, size = stream.take(0, 976), 16
        batches = [order[b : b + size] for b in range(0, 976, size)]
        padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
        return 1 - sum(lengths) / padded

    plain, grouped = padding(SampleStream(976, 0)), padding(SampleStream(976, 0, lengths, 16))
    assert plain > 0.3 and grouped < 0.05, (plain, grouped)


def test_sorted_batches_waste_little_on_skewed_lengths():
    """BioASQ-like inputs (a few long, many short): under 10% padding once sorted."""
    lengths = [40 + (i * 37) % 60 for i in range(100)] + [900, 1200, 1500, 2000]
    assert padding_share(lengths, token_batches(lengths, 16, 8192)) < 0.10


def _pairs(tokenizer) -> list[tuple[list[int], list[int]]]:
    texts = [
        ("Question: which gas do plants take in?\nAnswer:", " carbon dioxide"),
        ("Q: 2+2?\nA:", " 4"),
        (
            "Evidence: the heart pumps blood through the body and the lungs.\nQuestion: what pumps blood?\nAnswer:",
            " the heart, because it is a muscle that contracts",
        ),
        ("Is the sky blue?", " yes"),
        ("Name a prime number.", " seven"),
    ]
    return [
        (tokenizer.encode(p, add_special_tokens=False), tokenizer.encode(t, add_special_tokens=False)) for p, t in texts
    ]


def _target_nll(model, batch) -> torch.Tensor:
    out = model.base_model(**batch.causal_inputs(), use_cache=False)
    logits = model.lm_head(out.last_hidden_state[batch.target_mask]).float()
    return torch.nn.functional.cross_entropy(logits, batch.next_ids[batch.target_mask], reduction="none")


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
def test_packed_rows_give_the_loss_and_gradients_of_padded_rows(tiny_causal, tmp_path, architecture):
    if architecture == "llama":
        folder = tiny_causal
    else:
        from conftest import TINY_ARCHITECTURES

        from tinystudent.models.students import fresh_student

        config = {"model_type": architecture, "vocab_size": 320, **TINY_ARCHITECTURES[architecture]}
        folder = fresh_student(config, tmp_path / architecture, tokenizer_from=str(tiny_causal), seed=3)
    loaded = load_model(str(folder), device="cpu")
    model, pad = loaded.model, loaded.tokenizer.pad_token_id or 0
    pairs = _pairs(loaded.tokenizer)
    padded, packed = token_batch(pairs, "causal", pad), token_batch(pairs, "causal", pad, pack=True)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # fewer rows
    assert packed.n_targets == padded.n_targets and packed.tokens == padded.tokens
    losses, grads = [], []
    for batch in (padded, packed):
        model.zero_grad()
        nll = _target_nll(model, batch)
        nll.sum().backward()
        losses.append(nll.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[1].sum(), losses[0].sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses[1].sort().values, losses[0].sort().values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_training_with_packing_follows_the_padded_run(tiny_causal, tmp_path):
    """Three steps on answers and rationales of different lengths: packed and padded batches give
    the same loss at every step (same data order, same initial weights)."""
    from tinystudent.distill import TrainConfig, train_student
    from tinystudent.tasks.schema import Example

    words = "light water plant energy heat cold rock soil cell leaf root animal".split()
    examples = [
        Example(f"q{i}", " ".join(words[: 2 + i % 9]) + "?", ("heat", "light", "water"), i % 3) for i in range(12)
    ]
    rationales = {"t": {ex.id: " ".join(words[(i * 5) % 7 :]) * (1 + i % 4) for i, ex in enumerate(examples)}}
    histories = {}
    for packing in (False, True):
        config = TrainConfig(
            steps=3,
            batch_size=6,
            lr=1e-3,
            eval_before=False,
            device="cpu",
            seed=0,
            weights={"answer": 1.0, "rationale": 1.0},
            max_rationale_tokens=48,
            packing=packing,
        )
        result = train_student(
            str(tiny_causal),
            examples[2:],
            examples[:2],
            config,
            tmp_path / f"run-{packing}",
            rationales=rationales,
            task="t",
            resume=False,
        )
        histories[packing] = [row["loss"] for row in result.loss_history]
    assert len(histories[True]) == 3
    assert histories[True] == pytest.approx(histories[False], abs=1e-5, rel=1e-5)
