"""The verdict: for each teacher, the smallest student that beats it, judged on the same questions.

A student beats a teacher when its test accuracy is higher and a paired bootstrap over the same
test questions gives a one-sided p-value below `alpha` (the share of resamples in which the
student does not come out ahead). For a teacher known only by a reported accuracy there are no
per-question answers to pair with, so the student's accuracy is bootstrapped against that fixed
number instead, and the verdict says so.
"""

from __future__ import annotations

import numpy as np

from tinystudent.evaluation.stats import paired_bootstrap

SIZE_MEASURES = ("params", "peak_memory_mb")


def compare_to_fixed(correct: list[bool], reference_acc: float, n_resamples: int = 10000, seed: int = 0) -> dict:
    """Student accuracy minus a reported accuracy: difference, 95% interval and one-sided p-value."""
    values = np.asarray(correct, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    diffs = means - reference_acc
    return {
        "diff": float(values.mean() - reference_acc),
        "ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))],
        "p_value": float((diffs <= 0).mean()),
    }


def _paired(candidate: dict, teacher: dict) -> tuple[list[bool], list[bool]]:
    """Both answer lists over the questions both answered (matched by id when ids are given)."""
    if candidate.get("ids") is None or teacher.get("ids") is None:
        return candidate["correct"], teacher["correct"]
    position = {qid: k for k, qid in enumerate(teacher["ids"])}
    pairs = [
        (c, teacher["correct"][position[qid]])
        for qid, c in zip(candidate["ids"], candidate["correct"])
        if qid in position
    ]
    if not pairs:
        raise ValueError(f"{candidate.get('label')} and teacher {teacher['name']} share no test question")
    return [a for a, _ in pairs], [b for _, b in pairs]


def compare(candidate: dict, teacher: dict, n_resamples: int = 10000, seed: int = 0) -> dict:
    """Candidate vs teacher on the same questions (or vs the teacher's reported accuracy).

    Adds `subset` when the candidate answered only some of the teacher's questions (a debate
    run on the first N, say): how many they share and the teacher's accuracy on those.
    """
    if teacher.get("correct") is None:
        return compare_to_fixed(candidate["correct"], teacher["acc"], n_resamples, seed)
    mine, theirs = _paired(candidate, teacher)
    result = paired_bootstrap(mine, theirs, n_resamples, seed)
    if len(mine) < len(teacher["correct"]):
        result["subset"] = {"n": len(mine), "of": len(teacher["correct"]), "teacher_acc": sum(theirs) / len(theirs)}
    return result


def smallest_winner(
    teacher: dict, candidates: list[dict], by: str, alpha: float = 0.05, n_resamples: int = 10000, seed: int = 0
) -> dict:
    """The smallest candidate (by `by`) that beats `teacher`, or the closest one when none does.

    The closest is the one with the largest difference among candidates that answered every
    test question the teacher answered; only when there are none does a candidate judged on a
    subset count, and its entry says on how many questions.

    Args:
        teacher: `name`, `acc`, `measured`, and `correct` (per test question, same order as the
            candidates') or None for a reported teacher.
        candidates: each with `label`, `acc`, `correct`, `params`, `peak_memory_mb`.
        by: `params` or `peak_memory_mb`.
    """
    ranked = sorted((c for c in candidates if c.get(by) is not None), key=lambda c: c[by])
    entry = {
        "teacher": teacher["name"],
        "teacher_acc": teacher["acc"],
        "teacher_measured": teacher.get("measured", True),
        "by": by,
        "smallest_winner": None,
        "winner_acc": None,
        "winner_params": None,
        "winner_peak_memory_mb": None,
        "diff": None,
        "diff_ci95": None,
        "p_value": None,
        "closest": None,
        "largest_loser": None,
        "alpha": alpha,
    }
    best: tuple | None = None
    losers: list[tuple[dict, dict]] = []
    for candidate in ranked:
        result = compare(candidate, teacher, n_resamples, seed)
        if result["diff"] > 0 and result["p_value"] < alpha:
            entry.update(
                smallest_winner=candidate["label"],
                winner_acc=candidate["acc"],
                winner_params=candidate.get("params"),
                winner_peak_memory_mb=candidate.get("peak_memory_mb"),
                diff=result["diff"],
                diff_ci95=result["ci95"],
                p_value=result["p_value"],
                subset=result.get("subset"),
            )
            below = [loser for loser in losers if loser[0][by] < candidate[by]]
            entry["largest_loser"] = _largest(below, by)
            return entry
        losers.append((candidate, result))
        rank = ("subset" not in result, result["diff"])
        if best is None or rank > best[0]:
            best = (rank, candidate, result)
    if best:
        _, candidate, result = best
        entry["closest"] = _described(candidate, result)
        entry["largest_loser"] = _largest(losers, by)
    return entry


def _described(candidate: dict, result: dict) -> dict:
    return {
        "label": candidate["label"],
        "acc": candidate["acc"],
        "params": candidate.get("params"),
        "peak_memory_mb": candidate.get("peak_memory_mb"),
        "diff": result["diff"],
        "diff_ci95": result["ci95"],
        "p_value": result["p_value"],
        "subset": result.get("subset"),
    }


def _largest(losers: list[tuple[dict, dict]], by: str) -> dict | None:
    """The boundary below a winner: the best run of the largest candidate that does not win,
    among those judged on every test question when there are any (a debate on a subset is not)."""
    losers = [(c, r) for c, r in losers if "subset" not in r] or losers
    if not losers:
        return None
    size = max(candidate[by] for candidate, _ in losers)
    candidate, result = max(((c, r) for c, r in losers if c[by] == size), key=lambda cr: cr[0]["acc"])
    return _described(candidate, result)


def verdict(
    teachers: list[dict], candidates: list[dict], alpha: float = 0.05, n_resamples: int = 10000, seed: int = 0
) -> list[dict]:
    """One entry per teacher and size measure; the most accurate teacher is marked `best_teacher`."""
    if not teachers:
        return []
    best_name = max(teachers, key=lambda t: t["acc"])["name"]
    entries = []
    for teacher in teachers:
        for by in SIZE_MEASURES:
            entry = smallest_winner(teacher, candidates, by, alpha, n_resamples, seed)
            entry["best_teacher"] = teacher["name"] == best_name
            entries.append(entry)
    return entries
