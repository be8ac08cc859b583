"""A collaborating group's answers as an `EvalResult`, so the store, the verdict (the same paired
bootstrap against the same teachers) and the report treat a group like any single model."""

from __future__ import annotations

import math
from typing import Sequence

from tinystudent.collab.ensemble import average_probabilities, majority_vote, sum_costs
from tinystudent.evaluation.evaluate import EvalResult, Prediction
from tinystudent.evaluation.stats import bootstrap_ci

ENSEMBLE_METHODS = {"average": average_probabilities, "vote": majority_vote}


def check_same_questions(results: Sequence[EvalResult]) -> None:
    """Refuse members evaluated on different questions, splits or question orders."""
    if not results:
        raise ValueError("a group needs at least one member's evaluation")
    first = results[0]
    ids = [p.example_id for p in first.predictions]
    for result in results[1:]:
        if (result.task, result.split, result.data_hash) != (first.task, first.split, first.data_hash):
            raise ValueError(
                f"{result.model} was evaluated on {result.task}/{result.split} "
                f"(data {result.data_hash}), {first.model} on {first.task}/{first.split} "
                f"(data {first.data_hash}): group members must answer the same questions"
            )
        if [p.example_id for p in result.predictions] != ids:
            raise ValueError(
                f"{result.model} and {first.model} answered the questions in a different order or a different subset"
            )


def group_eval_result(
    name: str,
    task: str,
    split: str,
    data_hash: str,
    majority_baseline: float,
    predictions: list[Prediction],
    mode: str,
    cost: dict,
    settings: dict,
) -> EvalResult:
    """An `EvalResult` for a group's answers (accuracy and its interval computed here)."""
    correct = [p.correct for p in predictions]
    return EvalResult(
        model=name,
        task=task,
        split=split,
        n=len(predictions),
        acc=sum(correct) / len(correct) if correct else 0.0,
        acc_norm=None,
        ci95=list(bootstrap_ci(correct)),
        majority_baseline=majority_baseline,
        mode=mode,
        cost=cost,
        data_hash=data_hash,
        settings=settings,
        predictions=predictions,
        unparsed=sum(p.pred is None for p in predictions),
    )


def ensemble_eval_result(results: Sequence[EvalResult], method: str = "average", name: str | None = None) -> EvalResult:
    """The ensemble of several members' loglikelihood evaluations of the same questions.

    Args:
        results: one `EvalResult` per member, each in `loglikelihood` mode.
        method: `average` (average of probabilities) or `vote` (majority vote).
        name: the group's name [`ensemble-<method>(<member>+<member>...)`].

    Returns:
        An `EvalResult` whose predictions carry the ensemble's log-probabilities per choice
        (log of the averaged probabilities, or of the vote shares) and whose cost is the sum of
        the members' costs (`sum_costs`).
    """
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"ensemble method must be one of {sorted(ENSEMBLE_METHODS)}, got {method!r}")
    check_same_questions(results)
    template = results[0]
    golds = [int(p.gold) for p in template.predictions]  # choice indices: choice scores exist
    member_logprobs: list[list[list[float]]] = []
    for result in results:
        rows = [p.choice_logprobs for p in result.predictions]
        if any(row is None for row in rows):
            raise ValueError(
                f"{result.model} was evaluated in {result.mode} mode, without choice "
                "scores: ensembles need loglikelihood-mode evaluations"
            )
        member_logprobs.append([row for row in rows if row is not None])
    combined = ENSEMBLE_METHODS[method](member_logprobs, golds)
    predictions = [
        Prediction(p.example_id, p.gold, pred, pred, [_log(x) for x in probs])
        for p, pred, probs in zip(template.predictions, combined.predictions, combined.probabilities)
    ]
    members = [r.model for r in results]
    name = name or f"ensemble-{method}({'+'.join(members)})"
    settings = {
        "group": "ensemble",
        "method": method,
        "members": members,
        "member_identities": [r.settings.get("model_identity") for r in results],
        "member_acc": [r.acc for r in results],
    }
    return group_eval_result(
        name,
        template.task,
        template.split,
        template.data_hash,
        template.majority_baseline,
        predictions,
        f"ensemble_{method}",
        sum_costs([r.cost for r in results]),
        settings,
    )


def _log(x: float) -> float:
    # A floor instead of -inf keeps the stored JSON standard (no "-Infinity").
    return math.log(max(x, 1e-300))
