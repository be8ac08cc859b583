"""Assemble the study (what the report and `run --json` show) from a finished plan and what its units found."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Callable

import numpy as np

from tinystudent.evaluation.stats import bootstrap_ci, majority_baseline, pearson
from tinystudent.experiments.plan_model import Plan
from tinystudent.experiments.stages.collaboration import mutual_rows
from tinystudent.experiments.stages.search import search_summary
from tinystudent.experiments.stages.teachers import measurement
from tinystudent.experiments.verdict import compare, recipe_interval, verdict
from tinystudent.hashing import stable_hash
from tinystudent.results import RunResult, StudentResult, Study, TeacherResult
from tinystudent.store import Store, versions


def run_rows(plan: Plan) -> list[dict]:
    """The study's runs: the row of every unit that measured a student or a group, in the order
    they ran (untrained, taught, collaborating, searched)."""
    rows = []
    row_makers = {"mutual": mutual_rows}  # units that measure several models: one row per peer
    for unit in plan.units:
        result = plan.done(unit)
        if unit.kind in row_makers:
            rows += row_makers[unit.kind](unit, result)
        elif "row" in unit.args:
            rows.append({**result, **unit.args["row"]})
    return rows


def _groups(runs: list[dict], fixed: tuple[str, ...], varying: str, keep: Callable | None = None) -> list[dict]:
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        if run["group"] == "taught" and (keep is None or keep(run)):
            grouped[tuple(run[k] for k in fixed)].append(run)
    out = []
    for key, members in grouped.items():
        if len({m[varying] for m in members}) < 2:
            continue
        out.append(
            {
                **dict(zip(fixed, key)),
                "rows": [{varying: m[varying], "acc": m["acc"], "ci95": m["ci95"]} for m in members],
            }
        )
    return out


def comparisons(runs: list[dict]) -> dict:
    """Side-by-side tables: one vs several teachers, full vs LoRA, each objective."""
    rationale = lambda r: r["objective"].startswith("rationale") or r["objective"] == "answer"  # noqa: E731
    return {
        "one_vs_several_teachers": _groups(runs, ("student", "method", "seed"), "objective", rationale),
        "full_vs_lora": _groups(runs, ("student", "objective", "seed"), "method"),
        "objectives": _groups(runs, ("student", "method", "seed"), "objective"),
    }


def _versus(candidate: dict, teacher: dict) -> dict:
    """A run against one teacher on the same questions: difference and one-sided p."""
    result = compare(candidate, teacher)
    return {"diff": result["diff"], "p_value": result["p_value"]}


def how_cut(spec) -> str:
    """How a student was scaled down from its model: `layers every:3`, `feed-forward 50%`, `-`."""
    parts = []
    if spec.keep_layers is not None:
        layers = spec.keep_layers if isinstance(spec.keep_layers, str) else ",".join(map(str, spec.keep_layers))
        parts.append(f"layers {layers}")
    if spec.mlp_width is not None:
        parts.append(f"feed-forward {spec.mlp_width:.0%}")
    return ", ".join(parts) or "-"


def student_rows(plan: Plan) -> list[StudentResult]:
    """Each student as prepared: how it was cut, size, bits per byte on held-out text, and its
    recovery (the cut model's bits per byte before and after distillation from its parent)."""
    rows = []
    for name, unit in plan.students.items():
        student = plan.done(unit)
        recovery = student.get("recovery") or {}
        rows.append(
            StudentResult(
                name=name,
                cut=how_cut(plan.experiment.student(name)),
                kind=student.get("kind"),
                params=student.get("params"),
                bits_per_byte=student.get("bits_per_byte"),
                recovered=bool(recovery),
                bits_per_byte_before_recovery=recovery.get("bits_per_byte_before"),
                bits_per_byte_after_recovery=recovery.get("bits_per_byte_after"),
                recovery_steps=recovery.get("steps"),
                recovery_tokens=recovery.get("tokens"),
                recovery_seconds=recovery.get("seconds"),
            )
        )
    return rows


def teacher_rows(plan: Plan) -> tuple[list[TeacherResult], list[dict]]:
    """Each teacher as the study lists it, and those with an accuracy as the verdict judges them
    (with their answers, when they were measured here)."""
    rows, judged = [], []
    for spec in plan.experiment.teachers:
        t = measurement(plan, spec)
        if t is None:
            raise KeyError(f"teacher {spec.name} has not been measured: the plan has not run to its end")
        metric = t.get("metric", "acc")
        answers = plan.known.answers.get(t["evaluation_id"]) if t.get("evaluation_id") is not None else None
        ids, correct = (answers.ids, answers.by(metric)) if answers else (None, None)
        if correct is None and t.get("correct") is not None:
            ids, correct = [ex.id for ex in plan.data.splits.test], t["correct"]
        ci95 = t.get("ci95") if metric == "acc" or correct is None else list(bootstrap_ci(correct))
        rows.append(
            TeacherResult(
                name=t["name"],
                acc=t["acc"],
                ci95=ci95,
                scoring=t.get("scoring"),
                validation=t.get("validation") or [],
                params=t.get("params"),
                peak_memory_mb=t.get("peak_memory_mb"),
                latency_ms_p50=t.get("latency_ms_p50"),
                measured=t.get("measured", True),
                source=t.get("source"),
            )
        )
        if t["acc"] is not None:
            measured = t.get("measured", True)
            judged.append({"name": t["name"], "acc": t["acc"], "measured": measured, "ids": ids, "correct": correct})
    return rows, judged


def recipe_key(run: dict) -> tuple:
    """What a run is a seed of: its group, student, method, objective and members (a run without
    a seed is a recipe of its own)."""
    if run.get("seed") is None:
        return ("run", run["label"])
    members = tuple(run.get("members") or ())
    return (run.get("group"), run.get("student"), run.get("method"), run.get("objective"), members)


def recipes(candidates: list[dict]) -> list[dict]:
    """The verdict's candidates: the runs of one recipe over its seeds as one, its accuracy the
    mean over seeds, its answers one row per seed (`seeds_correct`), its interval from resampling
    questions and seeds (`verdict.recipe_interval`); a recipe of one seed keeps its run's label."""
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for run in candidates:
        grouped[recipe_key(run)].append(run)
    out = []
    for runs in grouped.values():
        runs = sorted(runs, key=lambda r: r.get("seed") or 0)
        first = runs[0]
        if any(run["ids"] != first["ids"] for run in runs):
            raise ValueError(f"the seeds of {first['label']} were measured on different test questions")
        label = first["label"]
        if len(runs) > 1:
            label = f"{label.rsplit(' / seed ', 1)[0]} ({len(runs)} seeds)"
        recipe = {
            **first,
            "label": label,
            "acc": float(np.mean([run["acc"] for run in runs])),
            "seeds": [{"seed": run.get("seed"), "label": run["label"], "acc": run["acc"]} for run in runs],
            "seed_std": float(np.std([run["acc"] for run in runs], ddof=1)) if len(runs) > 1 else None,
            "seeds_correct": [run["correct"] for run in runs],
        }
        recipe["ci95"] = recipe_interval(recipe) if len(runs) > 1 else first.get("ci95")
        out.append(recipe)
    return out


def _public(recipe: dict) -> dict:
    """A recipe as the study stores it: without its per-question answers."""
    return {k: v for k, v in recipe.items() if k not in ("ids", "correct", "seeds_correct", "vs_teachers")}


def baselines(recipes_: list[dict], majority: dict) -> dict:
    """The rows a reader compares a winner with: always giving the most common answer, and the best
    student taught by gold answers alone (so "taught by teachers" is measured against "not taught")."""
    answer_only = [r for r in recipes_ if r.get("group") == "taught" and r.get("objective") == "answer"]
    best = max(answer_only, key=lambda r: (r["acc"], -(r.get("params") or 0)), default=None)
    return {
        "majority": {"answer": majority["answer"], "acc": majority["acc"]},
        "answer_only": None if best is None else _public(best),
    }


def run_results(plan: Plan, judged: list[dict]) -> tuple[list[RunResult], list[dict]]:
    """Every run as the study lists it, each against every teacher, and the candidates of the
    verdict (taught and collaborating runs, with their answers)."""
    rows, candidates = [], []
    for run in run_rows(plan):
        row = RunResult.from_unit(run)
        rows.append(row)
        answers = plan.known.answers.get(run["evaluation_id"]) if run.get("evaluation_id") is not None else None
        if row.acc is None or answers is None:
            continue
        paired = {**row.to_dict(), "ids": answers.ids, "correct": answers.correct}
        row.vs_teachers = {t["name"]: _versus(paired, t) for t in judged}
        if row.group in ("taught", "collaboration"):
            candidates.append({**row.to_dict(), "ids": answers.ids, "correct": answers.correct})
    return rows, candidates


def build_study(plan: Plan, skipped: int = 0, computed: int = 0) -> Study:
    """The study of a finished plan: teachers, every run, the verdict, comparisons and correlations."""
    experiment, splits = plan.experiment, plan.data.splits
    teachers, judged = teacher_rows(plan)
    runs, candidates = run_results(plan, judged)
    grouped = recipes(candidates)
    rows = [run.to_dict() for run in runs]
    majority = majority_baseline(splits.test)
    majority_judge = {
        "name": f"always {majority['answer']!r}",
        "acc": majority["acc"],
        "ids": [ex.id for ex in splits.test],
        "correct": majority["correct"],
    }
    trained = [r for r in rows if r["group"] in ("taught", "collaboration")]
    log_params: list = [math.log10(r["params"]) if r["params"] else None for r in trained]  # None: size unknown
    return Study(
        teachers=teachers,
        runs=runs,
        experiment=experiment.name,
        task=experiment.task.name,
        split=experiment.task.test_split,
        n_test=len(splits.test),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        config=experiment.model_dump(),
        config_hash=stable_hash(experiment.model_dump()),
        data_hash=plan.data.hashes["test"],
        data_origin=splits.origin,
        versions=versions(),
        majority_baseline=majority["acc"],
        students=student_rows(plan),
        verdict=verdict(judged, grouped, majority=majority_judge),
        comparisons=comparisons(rows),
        bpb_correlation={
            "acc_vs_bpb_pearson": pearson([r["bits_per_byte"] for r in trained], [r["acc"] for r in trained]),
            "acc_vs_log_params_pearson": pearson(log_params, [r["acc"] for r in trained]),
        },
        units={"computed": computed, "skipped": skipped},
        search=search_summary(plan),
        contamination=plan.data.contamination,
        recipes=[_public(r) for r in grouped],
        baselines=baselines(grouped, majority),
    )


def load_study(store: Store, experiment: str) -> dict:
    """The last study `tinystudent run` stored for `experiment`."""
    stored = store.run(f"study:{experiment}")
    if stored is None:
        names = [
            r["experiment"]
            for r in store.db.execute("SELECT DISTINCT experiment FROM runs WHERE kind = 'study'").fetchall()
        ]
        raise KeyError(f"no study named {experiment!r} in {store.path}; stored studies: {names or 'none'}")
    return stored["result"]
