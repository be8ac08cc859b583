"""Ensembles: average of probabilities and majority vote checked by hand, summed cost, EvalResult."""

from __future__ import annotations

import math

import pytest
from conftest import build_tiny

from tinystudent.collab import (
    average_probabilities,
    choice_probabilities,
    ensemble_eval_result,
    majority_vote,
    sum_costs,
)
from tinystudent.evaluation import evaluate_model
from tinystudent.models import load_model
from tinystudent.store import Store
from tinystudent.tasks import Example


def scores(probs, shift=0.0):
    """Log-likelihoods whose softmax is `probs`; `shift` moves them all, as unnormalised scores do."""
    return [math.log(p) + shift for p in probs]


# [member][question][choice]; gold answers 0 and 1.
MEMBERS = [
    [scores([0.9, 0.05, 0.05], shift=-7.0), scores([0.5, 0.3, 0.2])],
    [scores([0.3, 0.4, 0.3], shift=2.0), scores([0.2, 0.6, 0.2], shift=-1.0)],
    [scores([0.35, 0.45, 0.2]), scores([0.1, 0.3, 0.6], shift=-30.0)],
]
GOLDS = [0, 1]


def test_choice_probabilities_is_a_softmax():
    assert choice_probabilities(scores([0.2, 0.8], shift=-500.0)) == pytest.approx([0.2, 0.8])
    assert choice_probabilities([0.0, 0.0, 0.0, 0.0]) == pytest.approx([0.25] * 4)


def test_average_of_probabilities_by_hand():
    result = average_probabilities(MEMBERS, GOLDS)
    # Question 1: (0.9 + 0.3 + 0.35) / 3, (0.05 + 0.4 + 0.45) / 3, (0.05 + 0.3 + 0.2) / 3.
    assert result.probabilities[0] == pytest.approx([1.55 / 3, 0.9 / 3, 0.55 / 3])
    # Question 2: (0.5 + 0.2 + 0.1) / 3, (0.3 + 0.6 + 0.3) / 3, (0.2 + 0.2 + 0.6) / 3.
    assert result.probabilities[1] == pytest.approx([0.8 / 3, 1.2 / 3, 1.0 / 3])
    assert result.predictions == [0, 1] and result.correct == [True, True] and result.acc == 1.0


def test_majority_vote_by_hand_with_a_tie():
    result = majority_vote(MEMBERS, GOLDS)
    # Question 1: members vote A, B, B: B wins 2 to 1 although the average favours A.
    # Question 2: members vote A, B, C, a three-way tie; summed probabilities A 0.8, B 1.2,
    # C 1.0, so B wins the tie.
    assert result.predictions == [1, 1]
    assert result.probabilities == [pytest.approx([1 / 3, 2 / 3, 0]), pytest.approx([1 / 3] * 3)]
    assert result.correct == [False, True] and result.acc == 0.5


def test_exact_tie_goes_to_the_lowest_choice():
    two = [[scores([0.7, 0.3])], [scores([0.3, 0.7])]]  # one vote each, summed 1.0 each
    assert majority_vote(two, [1]).predictions == [0]
    assert average_probabilities(two, [1]).predictions == [0]
    level = [[[-1.0, -1.0]], [[-2.0, -2.0]]]  # each member ties within itself: votes for A
    assert majority_vote(level, [0]).predictions == [0]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="member 1 scored 1 questions, expected 2"):
        average_probabilities([MEMBERS[0], MEMBERS[1][:1]], GOLDS)
    with pytest.raises(ValueError, match="loglikelihood"):
        majority_vote([[None, None]], GOLDS)
    with pytest.raises(ValueError, match="at least one member"):
        majority_vote([], GOLDS)


def test_cost_is_the_sum_of_members():
    a = {
        "params": 100,
        "params_embedding": 40,
        "params_non_embedding": 60,
        "size_on_disk_mb": 1.5,
        "peak_memory_mb": 300.0,
        "peak_memory_scope": "gpu allocator peak",
        "device": "cuda",
        "latency_ms_p50": 10.0,
        "latency_ms_p95": 20.0,
        "questions_per_s": 10.0,
        "batch_size": 16,
    }
    b = {
        **a,
        "params": 50,
        "params_embedding": 20,
        "params_non_embedding": 30,
        "size_on_disk_mb": 0.5,
        "peak_memory_mb": 100.0,
        "peak_memory_scope": "process peak RSS (reset)",
        "latency_ms_p50": 5.0,
        "latency_ms_p95": 7.5,
        "questions_per_s": 40.0,
    }
    total = sum_costs([a, b])
    assert total["members"] == 2
    assert (total["params"], total["params_embedding"], total["params_non_embedding"]) == (150, 60, 90)
    assert total["size_on_disk_mb"] == 2.0 and total["peak_memory_mb"] == 400.0
    assert (total["latency_ms_p50"], total["latency_ms_p95"]) == (15.0, 27.5)
    assert total["questions_per_s"] == 8.0  # 1 / (1/10 + 1/40): 0.1 s + 0.025 s per question
    assert total["device"] == "cuda" and total["batch_size"] == 16
    assert total["peak_memory_scope"] == ["gpu allocator peak", "process peak RSS (reset)"]
    assert sum_costs([a, {**b, "size_on_disk_mb": None}])["size_on_disk_mb"] is None


QUESTIONS = [
    Example("q1", "Which gas do plants take in?", ("oxygen", "carbon dioxide", "helium"), 1),
    Example("q2", "What is the sun?", ("a star", "a planet"), 0),
    Example("q3", "Water boils at one hundred degrees of what?", ("Celsius", "Fahrenheit", "Kelvin", "none"), 0),
]


def test_ensemble_of_real_evaluations(tiny_causal, tmp_path):
    members = [
        load_model(str(tiny_causal), device="cpu"),
        load_model(str(build_tiny("causal", tmp_path / "seed1", seed=1)), device="cpu"),
    ]
    results = [evaluate_model(m, QUESTIONS, "handmade", "test", batch_size=2) for m in members]
    group = ensemble_eval_result(results, "average")
    expected = average_probabilities(
        [[p.choice_logprobs for p in r.predictions] for r in results], [ex.answer for ex in QUESTIONS]
    )
    assert [p.pred for p in group.predictions] == expected.predictions
    assert group.acc == expected.acc and group.n == 3 and group.mode == "ensemble_average"
    assert [math.exp(x) for x in group.predictions[0].choice_logprobs] == pytest.approx(expected.probabilities[0])
    assert group.cost["params"] == results[0].cost["params"] + results[1].cost["params"]
    assert group.settings["members"] == [str(tiny_causal), str(tmp_path / "seed1")]
    voted = ensemble_eval_result(results, "vote", name="two tiny llamas")
    assert voted.model == "two tiny llamas" and voted.mode == "ensemble_vote"
    with Store() as store:  # stored like any single model's evaluation
        stored = store.evaluation(store.save_evaluation(group))
    assert stored["model"] == group.model and stored["cost"]["members"] == 2
    other = evaluate_model(members[0], QUESTIONS[:2], "handmade", "test")
    with pytest.raises(ValueError, match="same questions"):
        ensemble_eval_result([results[0], other])
    with pytest.raises(ValueError, match="ensemble method"):
        ensemble_eval_result(results, "median")
