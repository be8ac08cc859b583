"""Deep mutual learning (Zhang et al. 2018): peers learn together; identical peers add nothing."""

from __future__ import annotations

import shutil

import pytest

from tinystudent.distill import TrainConfig, train_mutual


@pytest.fixture(scope="module")
def arc(shared_dir):
    from tinystudent.tasks import load_task

    data = load_task(str(shared_dir / "data" / "tinyllm" / "arc"))
    return data.split("train")[:8], data.split("validation")[:6], data.split("test")[:3]


def config(**changes) -> TrainConfig:
    base = dict(
        steps=8,
        batch_size=4,
        lr=3e-3,
        warmup_ratio=0.0,
        eval_before=False,
        device="cpu",
        max_input_tokens=160,
        temperature=2.0,
    )
    return TrainConfig(**{**base, **changes})


def test_mutual_kl_is_zero_for_identical_peers(tiny_causal, arc, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(tiny_causal, twin)
    train, valid, _ = arc
    results = train_mutual([str(tiny_causal), str(twin)], train, valid, config(steps=3), tmp_path / "run", task="arc")
    for result in results:
        assert all(abs(h["mutual"]) < 1e-6 for h in result.loss_history)
    assert [h["loss"] for h in results[0].loss_history] == [h["loss"] for h in results[1].loss_history]


def test_mutual_learning_loss_falls_across_architectures(tiny_causal, tiny_encoder, arc, tmp_path):
    """A causal LM and a BERT cross-encoder teach each other through their choice distributions."""
    train, valid, test = arc
    results = train_mutual(
        [str(tiny_causal), str(tiny_encoder)],
        train,
        valid,
        config(weights={"answer": 1.0, "mutual": 2.0}),
        tmp_path / "run",
        task="arc",
        test_examples=test,
    )
    for result in results:
        history = result.loss_history
        assert history[0]["mutual"] > 0
        assert sum(h["loss"] for h in history[-2:]) < sum(h["loss"] for h in history[:2])
        assert result.test_acc is not None and (tmp_path / "run").exists()
    assert len({r.checkpoint for r in results}) == 2
    with pytest.raises(ValueError, match="at least two"):
        train_mutual([str(tiny_causal)], train, valid, config(), tmp_path / "one")
