"""The verdict: for each teacher, the smallest student that beats it, judged on the same questions.

A candidate is a recipe (a student, a method and an objective), trained with one seed or several.
It beats a teacher when it is more accurate than the teacher *and* than the majority baseline
(always giving the most common answer), each by a one-sided paired bootstrap with p below `alpha`:
the share of resamples in which the candidate does not come out ahead. Beating a teacher that is
itself below the majority baseline shows little, so a win needs both.

Each resample draws the test questions with replacement and, for a recipe with several seeds, its
seeds too (a two-level bootstrap): the candidate's accuracy in a resample is the mean over the
drawn seeds on the drawn questions, so the interval and p-value hold seed variance as well as the
sampling of questions. With one seed this is the usual paired bootstrap. For a teacher known only
by a reported accuracy there are no per-question answers to pair with, so the candidate is
bootstrapped against that fixed number instead, and the verdict says so.
"""

from __future__ import annotations

import numpy as np

SIZE_MEASURES = ("params", "peak_memory_mb")


def _seed_rows(candidate: dict) -> list[list[bool]]:
    """Per seed, which questions the candidate answered right (one row without `seeds_correct`)."""
    return candidate.get("seeds_correct") or [candidate["correct"]]


def _bootstrap(rows: np.ndarray, reference, n_resamples: int, seed: int) -> dict:
    """Mean accuracy of `rows` ([seeds, questions]) minus `reference` (per-question answers of
    the same questions, or a fixed accuracy), resampling questions and then seeds."""
    rng = np.random.default_rng(seed)
    n_seeds, n = rows.shape
    index = rng.integers(0, n, size=(n_resamples, n))
    if n_seeds == 1:
        mine = rows[0][index].mean(axis=1)
    else:
        drawn = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
        mine = np.stack([rows[drawn[:, s, None], index].mean(axis=1) for s in range(n_seeds)]).mean(axis=0)
    if np.ndim(reference) == 0:
        theirs = np.full(n_resamples, float(reference))
        observed = float(reference)
    else:
        theirs = np.asarray(reference, dtype=np.float64)[index].mean(axis=1)
        observed = float(np.mean(reference))
    diffs = mine - theirs
    return {
        "diff": float(rows.mean() - observed),
        "ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))],
        "p_value": float((diffs <= 0).mean()),
    }


def compare_to_fixed(correct: list[bool], reference_acc: float, n_resamples: int = 10000, seed: int = 0) -> dict:
    """Student accuracy minus a reported accuracy: difference, 95% interval and one-sided p-value."""
    return _bootstrap(np.asarray([correct], dtype=np.float64), reference_acc, n_resamples, seed)


def recipe_interval(candidate: dict, n_resamples: int = 10000, seed: int = 0) -> list[float]:
    """95% interval of a candidate's mean accuracy over its seeds, resampling questions and seeds."""
    result = _bootstrap(np.asarray(_seed_rows(candidate), dtype=np.float64), 0.0, n_resamples, seed)
    return result["ci95"]


def _paired(candidate: dict, teacher: dict) -> tuple[np.ndarray, list[bool]]:
    """The candidate's [seeds, questions] answers and the teacher's, over the questions both
    answered (matched by id when ids are given)."""
    rows = _seed_rows(candidate)
    if candidate.get("ids") is None or teacher.get("ids") is None:
        return np.asarray(rows, dtype=np.float64), list(teacher["correct"])
    position = {qid: k for k, qid in enumerate(teacher["ids"])}
    shared = [(j, position[qid]) for j, qid in enumerate(candidate["ids"]) if qid in position]
    if not shared:
        raise ValueError(f"{candidate.get('label')} and teacher {teacher['name']} share no test question")
    mine = np.asarray([[row[j] for j, _ in shared] for row in rows], dtype=np.float64)
    return mine, [teacher["correct"][k] for _, k in shared]


def compare(candidate: dict, teacher: dict, n_resamples: int = 10000, seed: int = 0) -> dict:
    """Candidate vs teacher on the same questions (or vs the teacher's reported accuracy).

    Adds `subset` when the candidate answered only some of the teacher's questions (a debate
    run on the first N, say): how many they share and the teacher's accuracy on those.
    """
    if teacher.get("correct") is None:
        return _bootstrap(np.asarray(_seed_rows(candidate), dtype=np.float64), teacher["acc"], n_resamples, seed)
    mine, theirs = _paired(candidate, teacher)
    result = _bootstrap(mine, theirs, n_resamples, seed)
    if len(theirs) < len(teacher["correct"]):
        result["subset"] = {"n": len(theirs), "of": len(teacher["correct"]), "teacher_acc": sum(theirs) / len(theirs)}
    return result


def _wins(result: dict, alpha: float) -> bool:
    return result["diff"] > 0 and result["p_value"] < alpha


def smallest_winner(
    teacher: dict,
    candidates: list[dict],
    by: str,
    alpha: float = 0.05,
    n_resamples: int = 10000,
    seed: int = 0,
    majority: dict | None = None,
) -> dict:
    """The smallest candidate (by `by`) that beats `teacher` and the majority baseline, or the
    closest one when none does.

    The closest is the one with the largest difference among candidates that answered every
    test question the teacher answered; only when there are none does a candidate judged on a
    subset count, and its entry says on how many questions.

    Args:
        teacher: `name`, `acc`, `measured`, and `correct` (per test question, same order as the
            candidates') or None for a reported teacher.
        candidates: each with `label`, `acc`, `correct` (or `seeds_correct`, one list per seed),
            `params`, `peak_memory_mb`.
        by: `params` or `peak_memory_mb`.
        majority: the majority baseline as a teacher (`name`, `acc`, `correct`, `ids`); None: no
            baseline to beat besides the teacher.
    """
    ranked = sorted((c for c in candidates if c.get(by) is not None), key=lambda c: c[by])
    entry = {
        "teacher": teacher["name"],
        "teacher_acc": teacher["acc"],
        "teacher_measured": teacher.get("measured", True),
        "teacher_below_majority": bool(majority is not None and teacher["acc"] <= majority["acc"]),
        "majority_baseline": None if majority is None else majority["acc"],
        "by": by,
        "smallest_winner": None,
        "winner_acc": None,
        "winner_params": None,
        "winner_peak_memory_mb": None,
        "winner_seeds": None,
        "diff": None,
        "diff_ci95": None,
        "p_value": None,
        "vs_majority": None,
        "closest": None,
        "largest_loser": None,
        "alpha": alpha,
    }
    best: tuple | None = None
    losers: list[tuple[dict, dict]] = []
    for candidate in ranked:
        result = compare(candidate, teacher, n_resamples, seed)
        if majority is not None:
            result["vs_majority"] = compare(candidate, majority, n_resamples, seed)
        if _wins(result, alpha) and (majority is None or _wins(result["vs_majority"], alpha)):
            entry.update(
                smallest_winner=candidate["label"],
                winner_acc=candidate["acc"],
                winner_params=candidate.get("params"),
                winner_peak_memory_mb=candidate.get("peak_memory_mb"),
                winner_seeds=len(_seed_rows(candidate)),
                diff=result["diff"],
                diff_ci95=result["ci95"],
                p_value=result["p_value"],
                vs_majority=result.get("vs_majority"),
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
        "seeds": len(_seed_rows(candidate)),
        "diff": result["diff"],
        "diff_ci95": result["ci95"],
        "p_value": result["p_value"],
        "vs_majority": result.get("vs_majority"),
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
    teachers: list[dict],
    candidates: list[dict],
    alpha: float = 0.05,
    n_resamples: int = 10000,
    seed: int = 0,
    majority: dict | None = None,
) -> list[dict]:
    """One entry per teacher and size measure; the most accurate teacher is marked `best_teacher`.
    A teacher without an accuracy (it only gave rationales) is not judged."""
    judged = [t for t in teachers if t.get("acc") is not None]
    if not judged:
        return []
    best_name = max(judged, key=lambda t: t["acc"])["name"]
    entries = []
    for teacher in judged:
        for by in SIZE_MEASURES:
            entry = smallest_winner(teacher, candidates, by, alpha, n_resamples, seed, majority)
            entry["best_teacher"] = teacher["name"] == best_name
            entries.append(entry)
    return entries
