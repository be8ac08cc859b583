"""Accuracy, intervals and baselines: one definition used for every model."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tinystudent.tasks.schema import Example


def accuracy(correct: list[bool]) -> float:
    return float(np.mean(correct)) if correct else 0.0


def bootstrap_ci(
    correct: list[bool], n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy, resampling questions with replacement."""
    if not correct:
        return (0.0, 0.0)
    values = np.asarray(correct, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def paired_bootstrap(correct_a: list[bool], correct_b: list[bool], n_resamples: int = 10000, seed: int = 0) -> dict:
    """Accuracy of A minus B on the same questions, its 95% interval and a one-sided p-value.

    The p-value is the share of resamples in which A does not beat B (difference <= 0), the
    usual paired-bootstrap test of "A is better than B".
    """
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or not len(a):
        raise ValueError(f"paired bootstrap needs two equal, non-empty lists, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(a), size=(n_resamples, len(a)))
    diffs = (a[index] - b[index]).mean(axis=1)
    return {
        "diff": float(a.mean() - b.mean()),
        "ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))],
        "p_value": float((diffs <= 0).mean()),
    }


def _labels(examples: list[Example]) -> list:
    """Each gold answer as the majority baseline counts it: its text when every question has the
    same choices (yes/no, yes/no/maybe), else its position (always "A", say)."""
    same_choices = len({ex.choices for ex in examples}) == 1
    return [ex.answer_text if same_choices else ex.answer for ex in examples]


def majority_baseline(examples: list[Example]) -> dict:
    """Accuracy of always giving the most frequent gold answer, that answer (`answer`, as shown)
    and which questions it gets right (`correct`)."""
    if not examples:
        return {"acc": 0.0, "answer": None, "correct": []}
    labels = _labels(examples)
    label, count = Counter(labels).most_common(1)[0]
    shown = label if isinstance(label, str) else f"choice {label}"
    return {"acc": count / len(examples), "answer": shown, "correct": [gold == label for gold in labels]}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation, or None with fewer than three points or no spread."""
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    x, y = np.array(pairs, dtype=np.float64).T
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])
