"""A stored evaluation read back: whole (`stored_eval_result`) or which questions it answered
right (`answers_of`). The stages, the runner and the study read evaluations through it."""

from __future__ import annotations

import json

from tinystudent.evaluation.evaluate import EvalResult, Prediction
from tinystudent.experiments.plan_model import Answers
from tinystudent.store import Store


def stored_eval_result(store: Store, evaluation_id: int) -> EvalResult:
    """An evaluation read back from the store, with its predictions."""
    row = store.evaluation(evaluation_id)
    predictions = [
        Prediction(
            p["example_id"],
            p["gold"],
            p["pred"],
            p["pred_norm"],
            json.loads(p["choice_logprobs"]) if p["choice_logprobs"] else None,
            p["text"],
        )
        for p in store.predictions(evaluation_id)
    ]
    return EvalResult(
        model=row["model"],
        task=row["task"],
        split=row["split"],
        n=row["n"],
        acc=row["acc"],
        acc_norm=row["acc_norm"],
        ci95=[row["ci_low"], row["ci_high"]],
        majority_baseline=row["majority_baseline"],
        mode=row["mode"],
        cost=row["cost"],
        data_hash=row["data_hash"],
        settings=row["settings"],
        predictions=predictions,
    )


def answers_of(store: Store, evaluation_id: int) -> Answers:
    """Which questions a stored evaluation answered right, by `acc` (the highest score) and by
    `acc_norm` (the highest score per character)."""
    rows = store.predictions(evaluation_id)
    return Answers(
        [r["example_id"] for r in rows], [bool(r["correct"]) for r in rows], [r["pred_norm"] == r["gold"] for r in rows]
    )


__all__ = ["answers_of", "stored_eval_result"]
