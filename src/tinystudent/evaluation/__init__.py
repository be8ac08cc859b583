"""Evaluation: choice scoring (acc, acc_norm), generative answers, intervals and cost."""

from tinystudent.evaluation.evaluate import MODES, EvalResult, Prediction, evaluate_model
from tinystudent.evaluation.scoring import score_choices, score_choices_encoder, score_choices_naive
from tinystudent.evaluation.stats import bootstrap_ci, majority_baseline, paired_bootstrap

__all__ = [
    "MODES",
    "EvalResult",
    "Prediction",
    "bootstrap_ci",
    "evaluate_model",
    "majority_baseline",
    "paired_bootstrap",
    "score_choices",
    "score_choices_encoder",
    "score_choices_naive",
]
