"""A study's verdict holds up: seeds are judged together, a win beats the majority baseline too, a
teacher below that baseline is flagged, the baseline rows are stated, and a teacher that only gave
rationales is listed, not judged."""

from __future__ import annotations

import random
import re

import pytest

from tinystudent.experiments.study import baselines, recipes
from tinystudent.experiments.verdict import verdict
from tinystudent.report import render_report, verdict_text
from tinystudent.results import Study

N = 100
IDS = [f"q{i}" for i in range(N)]
YES = [i % 3 != 0 for i in range(N)]  # 66 of 100 questions are "yes"


def answers(acc: float, seed: int) -> list[bool]:
    """Right on exactly round(acc * N) questions, picked by `seed`."""
    right = set(random.Random(seed).sample(range(N), round(acc * N)))
    return [i in right for i in range(N)]


def run(student: str, objective: str, seed: int, acc: float, params: int) -> dict:
    correct = answers(acc, hash((student, objective, seed)) % 1000)
    return {
        "label": f"{student} / full / {objective} / seed {seed}",
        "student": student,
        "method": "full",
        "objective": objective,
        "seed": seed,
        "group": "taught",
        "acc": sum(correct) / N,
        "ci95": [0.0, 1.0],
        "params": params,
        "peak_memory_mb": params / 1e5,
        "ids": IDS,
        "correct": correct,
    }


def test_seeds_of_a_recipe_are_one_candidate_with_each_seed_kept():
    runs = [run("small", "answer", s, acc, 10) for s, acc in zip((0, 1, 2), (0.70, 0.74, 0.78))]
    runs.append(run("small", "rationale:all", 0, 0.80, 10))
    grouped = {r["label"]: r for r in recipes(runs)}
    assert set(grouped) == {"small / full / answer (3 seeds)", "small / full / rationale:all / seed 0"}
    three = grouped["small / full / answer (3 seeds)"]
    assert three["acc"] == pytest.approx(0.74)
    assert [(s["seed"], s["acc"]) for s in three["seeds"]] == [(0, 0.70), (1, 0.74), (2, 0.78)]
    assert three["seed_std"] == pytest.approx(0.04)
    assert three["ci95"][0] < 0.70 and three["ci95"][1] > 0.78  # questions and seeds both vary
    best = baselines(list(grouped.values()), {"answer": "yes", "acc": 0.67})
    assert best["answer_only"]["label"] == "small / full / answer (3 seeds)"
    assert "correct" not in best["answer_only"] and best["majority"] == {"answer": "yes", "acc": 0.67}


def majority() -> dict:
    return {"name": "always 'yes'", "acc": sum(YES) / N, "ids": IDS, "correct": YES}


def rigour_study() -> Study:
    """Three students over two seeds each, a measured teacher below the majority, a reported
    teacher, and one that only gave rationales."""
    runs = [
        *(run("tiny", "answer", s, 0.67, 10_000_000) for s in (0, 1)),
        *(run("small", "answer", s, 0.70, 20_000_000) for s in (0, 1)),
        *(run("large", "rationale:all", s, a, 40_000_000) for s, a in ((0, 0.86), (1, 0.88))),
    ]
    for r in runs[:2]:  # the tiniest student learnt only to say "yes"
        r["correct"], r["acc"] = YES, sum(YES) / N
    weak = {"name": "weak", "acc": 0.60, "measured": True, "ids": IDS, "correct": answers(0.60, 7)}
    paper = {"name": "paper", "acc": 0.74, "measured": False, "ids": None, "correct": None}
    grouped = recipes(runs)
    entries = verdict([weak, paper], grouped, majority=majority())
    teachers = [
        {"name": "weak", "acc": 0.60, "ci95": [0.5, 0.7], "measured": True},
        {"name": "paper", "acc": 0.74, "measured": False, "source": "a paper"},
        {"name": "writer", "acc": None, "measured": False},
    ]
    rows = [{k: v for k, v in r.items() if k not in ("ids", "correct")} for r in runs]
    public = [{k: v for k, v in r.items() if k not in ("ids", "correct", "seeds_correct")} for r in grouped]
    return Study.from_dict(
        {
            "experiment": "rigour",
            "task": "yesno",
            "n_test": N,
            "majority_baseline": sum(YES) / N,
            "teachers": teachers,
            "runs": rows,
            "verdict": entries,
            "recipes": public,
            "baselines": baselines(grouped, {"answer": "yes", "acc": sum(YES) / N}),
            "contamination": {"test_questions": N, "checked": {"train": 50}, "overlap": 0},
        }
    )


def test_a_teacher_below_the_majority_is_flagged_and_the_winner_beats_both():
    study = rigour_study()
    weak = [e for e in study.verdict if e["teacher"] == "weak" and e["by"] == "params"][0]
    assert weak["teacher_below_majority"] is True
    assert weak["smallest_winner"] == "large / full / rationale:all (2 seeds)"  # not "tiny": it only says yes
    assert weak["largest_loser"]["label"] in ("small / full / answer (2 seeds)", "tiny / full / answer (2 seeds)")
    text = " ".join(verdict_text(study).split())
    assert "weak (acc 60.0%, below always-'yes' at 66.0%; beating it shows little)" in text
    assert "It also beats the majority baseline: +21.0 points" in text
    assert "writer" not in text  # a teacher with rationales only is not judged


def test_the_report_states_the_baselines_the_seeds_and_a_rationales_only_teacher(tmp_path):
    study = rigour_study()
    markdown = render_report(study, tmp_path)["markdown"].read_text(encoding="utf-8")
    text = " ".join(markdown.split())
    assert "majority baseline (always 'yes') | 66.0%" in text
    assert "best student on gold answers alone: small / full / answer (2 seeds) | 70.0%" in text
    seeds = re.search(r"\| large / full / rationale:all \(2 seeds\) \| 0: 86\.0%, 1: 88\.0% \| 87\.0% \|", text)
    assert seeds is not None
    assert re.search(r"\| writer +\| +– +\|.*rationales only, not scored", markdown) is not None
