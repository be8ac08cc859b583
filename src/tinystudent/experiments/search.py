"""Loss-guided search: train as few students of a ladder as it takes to find the smallest winner.

Du et al. 2024 (arXiv 2403.15796) found that a model's pre-training loss, not its size, predicts
what it can do, and that some abilities appear only below a loss threshold. So the bits per byte
of a student *before* training (on the task's own text, `tinystudent loss`) is a cheap guess at
whether it can be taught to beat the teacher.

The search walks the ladder in order of increasing size (parameters; equal sizes by lower bits
per byte first, then name) and, for each candidate:

1. Skips it when its bits per byte is worse than the threshold in force:
   - the user's threshold: skip when `bits_per_byte > threshold`;
   - the fitted threshold (on by default): the lowest bits per byte among the candidates already
     trained that did *not* beat the teacher, minus `margin`; skip when `bits_per_byte >=`
     it. A student no better pre-trained than one that already failed is expected to fail too,
     whatever its size. Before any candidate has failed there is no fitted threshold.
   Both apply when both are set.
2. Otherwise trains it (`train_fn`) and asks `beats_teacher(result)` (the paired bootstrap
   against the teacher, decided by the caller).
3. Stops at the first candidate that beats the teacher: the candidates after it are larger, so
   the smallest winner is settled and they are not needed. (Thresholds only tighten as the
   search goes, so once every remaining candidate is above them, none is trained.)

Winners never fit the threshold: the search stops at the first one. (Across searches, the bits
per byte of past winners is a reasonable user threshold.) The report counts the training runs
saved against training the whole ladder, split into skipped and not needed after the verdict.
The verdict assumes what the skip rule assumes: a skipped smaller student would not have won.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Candidate:
    """A student the search may train.

    Attributes:
        name: how the caller knows it (a model id, a folder, a scaled-down spec).
        params: total parameters: the ladder's order.
        bits_per_byte: its language-modelling loss before training (`tinystudent loss`).
    """

    name: str
    params: int
    bits_per_byte: float


@dataclass
class SearchStep:
    """What the search did with one candidate.

    Attributes:
        candidate: the candidate.
        action: `trained`, `skipped` or `not_needed` (after the verdict was settled).
        reason: why, in words.
        threshold: the bits-per-byte threshold in force when it was considered (None: none).
        result: what `train_fn` returned (trained candidates only).
        beat_teacher: `beats_teacher(result)` (trained candidates only).
    """

    candidate: Candidate
    action: str
    reason: str
    threshold: float | None = None
    result: Any = None
    beat_teacher: bool | None = None


@dataclass
class SearchReport:
    """The outcome of a loss-guided search."""

    steps: list[SearchStep]
    winner: Candidate | None
    ladder_size: int
    trained: int
    skipped: int
    not_needed: int
    settings: dict = field(default_factory=dict)

    @property
    def runs_saved(self) -> int:
        """Training runs the full ladder would have taken that the search did not."""
        return self.ladder_size - self.trained

    def summary(self) -> dict:
        return {
            "winner": self.winner.name if self.winner else None,
            "ladder_size": self.ladder_size,
            "trained": self.trained,
            "skipped": self.skipped,
            "not_needed": self.not_needed,
            "runs_saved": self.runs_saved,
            **self.settings,
            "steps": [
                {
                    "name": s.candidate.name,
                    "params": s.candidate.params,
                    "bits_per_byte": s.candidate.bits_per_byte,
                    "action": s.action,
                    "reason": s.reason,
                    "threshold": s.threshold,
                    "beat_teacher": s.beat_teacher,
                }
                for s in self.steps
            ],
        }


def ladder_order(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Increasing size; equal sizes by lower bits per byte, then by name."""
    return sorted(candidates, key=lambda c: (c.params, c.bits_per_byte, c.name))


def _check_ladder(candidates: Sequence[Candidate]) -> None:
    if not candidates:
        raise ValueError("the ladder is empty: give at least one candidate student")
    names = [c.name for c in candidates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"candidate names must be unique, repeated: {duplicates}")
    for c in candidates:
        if not c.params > 0 or not c.bits_per_byte > 0:
            raise ValueError(
                f"candidate {c.name!r}: params and bits_per_byte must be positive, got "
                f"{c.params} and {c.bits_per_byte} (measure it with `tinystudent loss`)"
            )


def _skip_reason(candidate: Candidate, user_threshold: float | None, fitted_threshold: float | None) -> str | None:
    bpb = candidate.bits_per_byte
    if user_threshold is not None and bpb > user_threshold:
        return f"bits per byte {bpb:.4f} > the threshold {user_threshold:.4f} you set"
    if fitted_threshold is not None and bpb >= fitted_threshold:
        return (
            f"bits per byte {bpb:.4f} >= {fitted_threshold:.4f}, fitted from a trained "
            "student that did not beat the teacher"
        )
    return None


def loss_guided_search(
    candidates: Sequence[Candidate],
    train_fn: Callable[[Candidate], Any],
    beats_teacher: Callable[[Any], bool],
    threshold: float | None = None,
    fit_threshold: bool = True,
    margin: float = 0.0,
) -> SearchReport:
    """Train the ladder smallest first, skipping and stopping as the module docstring says.

    Args:
        candidates: the ladder, in any order.
        train_fn: trains (and evaluates) one candidate, returns its result; called at most once
            per candidate, in ladder order. Make it resumable (reuse a finished run) to resume
            a killed search: the search itself keeps no state.
        beats_teacher: whether a result beats the teacher (e.g. the paired bootstrap's p-value
            below 0.05).
        threshold: skip candidates whose bits per byte is above this [None: no fixed threshold].
        fit_threshold: also skip candidates no better than the best failed one [True].
        margin: with `fit_threshold`, how much lower than the best failed candidate's bits per
            byte a candidate must be to be trained [0.0].
    """
    _check_ladder(candidates)
    if margin < 0:
        raise ValueError(f"margin must be 0 or more, got {margin}")
    ladder = ladder_order(candidates)
    steps: list[SearchStep] = []
    failed_bpb: list[float] = []
    winner = None
    for index, candidate in enumerate(ladder):
        fitted = min(failed_bpb) - margin if fit_threshold and failed_bpb else None
        reason = _skip_reason(candidate, threshold, fitted)
        if reason:
            steps.append(SearchStep(candidate, "skipped", reason, _in_force(threshold, fitted)))
            continue
        result = train_fn(candidate)
        won = bool(beats_teacher(result))
        steps.append(
            SearchStep(
                candidate,
                "trained",
                "beat the teacher" if won else "did not beat the teacher",
                _in_force(threshold, fitted),
                result,
                won,
            )
        )
        if won:
            winner = candidate
            steps += [
                SearchStep(c, "not_needed", f"a smaller student ({candidate.name}) already beat the teacher")
                for c in ladder[index + 1 :]
            ]
            break
        failed_bpb.append(candidate.bits_per_byte)
    counts = {action: sum(s.action == action for s in steps) for action in ("trained", "skipped", "not_needed")}
    return SearchReport(
        steps,
        winner,
        len(ladder),
        counts["trained"],
        counts["skipped"],
        counts["not_needed"],
        {"threshold": threshold, "fit_threshold": fit_threshold, "margin": margin},
    )


def _in_force(user: float | None, fitted: float | None) -> float | None:
    """The tighter of the two thresholds (the lower bits per byte), or whichever is set."""
    set_ = [t for t in (user, fitted) if t is not None]
    return min(set_) if set_ else None
