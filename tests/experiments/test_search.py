"""Loss-guided search on a synthetic ladder: what it trains, skips and no longer needs."""

from __future__ import annotations

import random

import pytest

from tinystudent.experiments.search import Candidate, loss_guided_search

# name, params, bits per byte, accuracy it would reach once trained (teacher: 0.60)
LADDER = [
    ("s10", 10, 1.60, 0.40),
    ("s20", 20, 1.70, 0.70),
    ("s30", 30, 1.20, 0.50),
    ("s40", 40, 1.25, 0.65),
    ("s50", 50, 1.00, 0.70),
    ("s60", 60, 0.90, 0.80),
    ("s70", 70, 0.80, 0.90),
]
ACC = {name: acc for name, _, _, acc in LADDER}


def ladder():
    candidates = [Candidate(name, params, bpb) for name, params, bpb, _ in LADDER]
    random.Random(3).shuffle(candidates)  # the search orders them itself
    return candidates


def run(**options):
    trained = []

    def train(candidate):
        trained.append(candidate.name)
        return {"acc": ACC[candidate.name]}

    report = loss_guided_search(ladder(), train, lambda result: result["acc"] > 0.60, **options)
    return report, trained


def actions(report):
    return {step.candidate.name: step.action for step in report.steps}


def test_fitted_threshold_skips_and_the_first_winner_stops_the_search():
    report, trained = run()
    # s10 fails (1.60); s20 (1.70 >= 1.60) is skipped although it would have won; s30 fails
    # (1.20); s40 (1.25 >= 1.20) is skipped; s50 (1.00) wins; s60 and s70 are not needed.
    assert trained == ["s10", "s30", "s50"]
    assert actions(report) == {
        "s10": "trained",
        "s20": "skipped",
        "s30": "trained",
        "s40": "skipped",
        "s50": "trained",
        "s60": "not_needed",
        "s70": "not_needed",
    }
    assert report.winner.name == "s50"
    assert (report.trained, report.skipped, report.not_needed, report.runs_saved) == (3, 2, 2, 4)
    s40 = next(s for s in report.steps if s.candidate.name == "s40")
    assert s40.threshold == 1.20 and "fitted" in s40.reason
    assert [s.beat_teacher for s in report.steps if s.action == "trained"] == [False, False, True]
    assert report.summary()["runs_saved"] == 4 and report.summary()["winner"] == "s50"


def test_user_threshold_skips_from_the_start():
    report, trained = run(threshold=1.5, fit_threshold=False)
    # s10 (1.60) and s20 (1.70) are above 1.5; s30 fails, s40 (1.25) is trained and wins.
    assert trained == ["s30", "s40"]
    assert report.winner.name == "s40" and report.runs_saved == 5
    assert actions(report)["s10"] == "skipped" and "you set" in report.steps[0].reason


def test_without_thresholds_every_candidate_is_trained_until_one_wins():
    report, trained = run(fit_threshold=False)
    assert trained == ["s10", "s20"] and report.winner.name == "s20"
    assert report.skipped == 0 and report.not_needed == 5


def test_margin_demands_a_clearly_better_loss():
    report, trained = run(margin=0.45)
    # After s10 fails the bar is 1.60 - 0.45 = 1.15: s20, s30 (1.20) and s40 are skipped;
    # s50 (1.00) is trained and wins.
    assert trained == ["s10", "s50"] and report.skipped == 3 and report.runs_saved == 5


def test_no_winner_trains_only_what_the_threshold_allows():
    report = loss_guided_search(ladder(), lambda c: {"acc": 0.0}, lambda r: False)
    # Each failure lowers the bar: s10, s30, s50, s60, s70 are trained (each below every earlier
    # failure); s20 and s40 are skipped.
    assert report.winner is None and report.trained == 5 and report.skipped == 2
    equal = [Candidate("a", 1, 1.0), Candidate("b", 2, 1.0)]
    report = loss_guided_search(equal, lambda c: c.name, lambda r: False)
    assert actions(report) == {"a": "trained", "b": "skipped"}  # same loss as a failure


def test_bad_ladders_are_refused():
    with pytest.raises(ValueError, match="empty"):
        loss_guided_search([], lambda c: c, lambda r: True)
    with pytest.raises(ValueError, match="unique"):
        loss_guided_search([Candidate("a", 1, 1.0), Candidate("a", 2, 0.9)], lambda c: c, lambda r: True)
    with pytest.raises(ValueError, match="tinystudent loss"):
        loss_guided_search([Candidate("a", 1, float("nan"))], lambda c: c, lambda r: True)
    with pytest.raises(ValueError, match="margin"):
        loss_guided_search([Candidate("a", 1, 1.0)], lambda c: c, lambda r: True, margin=-1)
