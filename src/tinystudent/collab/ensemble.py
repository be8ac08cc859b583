"""Ensembles of small models at inference: average of probabilities and majority vote.

Each member scores the same questions (its per-choice log-likelihoods from an evaluation in
`loglikelihood` mode). The ensemble never sees the gold answers except to count its accuracy.

- Average of probabilities: each member's choice scores are turned into a probability
  distribution over that question's choices (softmax of the log-likelihoods), the members'
  distributions are averaged, and the ensemble answers the most probable choice.
- Majority vote: each member votes for its own best choice (the highest log-likelihood; its
  lowest index on an exact tie); the choice with most votes wins. A tie in votes goes to the
  tied choice with the highest summed member probability, and an exact tie in that to the lowest
  choice index, so the answer never depends on chance.

The cost of an ensemble is the sum of its members' costs: every member must be stored, held and
run to answer one question (`sum_costs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

# Cost fields that add up across members run one after another on one question.
ADDITIVE_COSTS = (
    "params",
    "params_embedding",
    "params_non_embedding",
    "size_on_disk_mb",
    "peak_memory_mb",
    "latency_ms_p50",
    "latency_ms_p95",
)


@dataclass
class EnsembleResult:
    """What an ensemble answered.

    Attributes:
        method: `average` or `vote`.
        predictions: the chosen option per question.
        correct: whether each prediction is the gold answer.
        acc: share of questions answered correctly.
        probabilities: per question, the ensemble's distribution over choices (averaged member
            probabilities for `average`, vote shares for `vote`).
    """

    method: str
    predictions: list[int]
    correct: list[bool]
    acc: float
    probabilities: list[list[float]] = field(default_factory=list)


def choice_probabilities(logprobs: Sequence[float]) -> list[float]:
    """Softmax over one question's choice log-likelihoods: a distribution over its choices."""
    if not logprobs:
        raise ValueError("a question needs at least one choice score")
    top = max(logprobs)
    weights = [math.exp(value - top) for value in logprobs]  # shifted: exp never overflows
    total = sum(weights)
    return [w / total for w in weights]


def _check_shapes(member_logprobs: Sequence[Sequence[Sequence[float]]], golds: Sequence[int]) -> None:
    if not member_logprobs:
        raise ValueError("an ensemble needs at least one member")
    for m, member in enumerate(member_logprobs):
        if len(member) != len(golds):
            raise ValueError(
                f"member {m} scored {len(member)} questions, expected {len(golds)} "
                "(every member must score the same questions in the same order)"
            )
        for q, row in enumerate(member):
            if row is None:
                raise ValueError(
                    f"member {m}, question {q}: no choice scores (ensembles need evaluations in loglikelihood mode)"
                )
            if len(row) != len(member_logprobs[0][q]):
                raise ValueError(
                    f"member {m}, question {q}: {len(row)} choice scores, member 0 has {len(member_logprobs[0][q])}"
                )


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the lowest index among exact ties."""
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


def _result(
    method: str, predictions: list[int], golds: Sequence[int], probabilities: list[list[float]]
) -> EnsembleResult:
    correct = [p == g for p, g in zip(predictions, golds)]
    acc = sum(correct) / len(correct) if correct else 0.0
    return EnsembleResult(method, predictions, correct, acc, probabilities)


def average_probabilities(member_logprobs: Sequence[Sequence[Sequence[float]]], golds: Sequence[int]) -> EnsembleResult:
    """Average-of-probabilities ensemble.

    Args:
        member_logprobs: [member][question][choice] log-likelihoods, e.g.
            `[p.choice_logprobs for p in result.predictions]` for each member's `EvalResult`.
        golds: the gold choice index of each question.
    """
    _check_shapes(member_logprobs, golds)
    predictions, averaged = [], []
    for q in range(len(golds)):
        per_member = [choice_probabilities(member[q]) for member in member_logprobs]
        mean = [sum(column) / len(per_member) for column in zip(*per_member)]
        averaged.append(mean)
        predictions.append(_argmax(mean))
    return _result("average", predictions, golds, averaged)


def majority_vote(member_logprobs: Sequence[Sequence[Sequence[float]]], golds: Sequence[int]) -> EnsembleResult:
    """Majority-vote ensemble; ties in votes go to the highest summed probability, then the
    lowest choice index (see the module docstring).

    Args:
        member_logprobs: [member][question][choice] log-likelihoods.
        golds: the gold choice index of each question.
    """
    _check_shapes(member_logprobs, golds)
    predictions, shares = [], []
    for q in range(len(golds)):
        n_choices = len(member_logprobs[0][q])
        votes = [0] * n_choices
        summed = [0.0] * n_choices
        for member in member_logprobs:
            votes[_argmax(member[q])] += 1
            for c, p in enumerate(choice_probabilities(member[q])):
                summed[c] += p
        most = max(votes)
        tied = [c for c in range(n_choices) if votes[c] == most]
        predictions.append(max(tied, key=lambda c: (summed[c], -c)))
        shares.append([v / len(member_logprobs) for v in votes])
    return _result("vote", predictions, golds, shares)


def sum_costs(costs: Sequence[dict]) -> dict:
    """The cost of a group of models that all run on every question: the sum of its members.

    Parameters, disk size, peak memory and per-question latency percentiles add up: members are
    held together and run one after another. (A sum of percentiles is the percentile of the sum
    exactly when the members' latencies rise and fall together; otherwise it approximates it.)
    Throughput combines as 1 / sum(1 / questions_per_s). Other fields (device,
    batch size, memory scope) are kept when every member agrees, else listed per member.
    A missing (None) value in any member makes the sum None rather than a silent undercount.
    """
    if not costs:
        raise ValueError("sum_costs needs at least one member's cost")
    total: dict = {"members": len(costs)}
    for key in ADDITIVE_COSTS:
        if any(key in c for c in costs):
            values = [c.get(key) for c in costs]
            total[key] = None if any(v is None for v in values) else _round(sum(values))
    rates = [c.get("questions_per_s") for c in costs]
    if any(r is not None for r in rates):
        positive = [r for r in rates if r is not None and r > 0]
        usable = len(positive) == len(rates)
        total["questions_per_s"] = round(1 / sum(1 / r for r in positive), 3) if usable else None
    for key in sorted({k for c in costs for k in c} - set(ADDITIVE_COSTS) - {"questions_per_s", "members"}):
        values = [c.get(key) for c in costs]
        total[key] = values[0] if all(v == values[0] for v in values) else values
    return total


def _round(value):
    return round(value, 2) if isinstance(value, float) else value
