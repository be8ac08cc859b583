"""Assemble the study (what the report and `run --json` show) from the stored results."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict

from tinystudent.evaluation.evaluate import EvalResult, Prediction
from tinystudent.evaluation.stats import bootstrap_ci, majority_baseline, pearson
from tinystudent.experiments.verdict import compare, verdict
from tinystudent.hashing import stable_hash
from tinystudent.store import Store, versions

RUN_KEYS = (
    "run_key",
    "label",
    "student",
    "params",
    "method",
    "objective",
    "seed",
    "group",
    "members",
    "acc",
    "acc_norm",
    "ci95",
    "n",
    "peak_memory_mb",
    "latency_ms_p50",
    "questions_per_s",
    "bits_per_byte",
    "train_seconds",
    "evaluation_id",
    "status",
    "truncated",
)


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
        row["model"],
        row["task"],
        row["split"],
        row["n"],
        row["acc"],
        row["acc_norm"],
        [row["ci_low"], row["ci_high"]],
        row["majority_baseline"],
        row["mode"],
        row["cost"],
        row["data_hash"],
        row["settings"],
        predictions,
    )


def correct_by_id(
    store: Store, evaluation_id: int | None, metric: str = "acc"
) -> tuple[list[str], list[bool]] | tuple[None, None]:
    """Question ids and whether each was answered right, by `acc` (the highest score) or
    `acc_norm` (the highest score per character)."""
    if evaluation_id is None:
        return None, None
    rows = store.predictions(evaluation_id)
    if metric == "acc_norm":
        return [r["example_id"] for r in rows], [r["pred_norm"] == r["gold"] for r in rows]
    return [r["example_id"] for r in rows], [bool(r["correct"]) for r in rows]


def _run_row(run: dict) -> dict:
    row = {key: run.get(key) for key in RUN_KEYS}
    row["status"] = run.get("status", "done")
    row["train_seconds"] = run.get("train_seconds") or (run.get("train") or {}).get("train_seconds")
    row["valid_acc"] = (run.get("train") or {}).get("valid_acc")
    return row


def _groups(runs: list[dict], fixed: tuple[str, ...], varying: str, keep=lambda r: True) -> list[dict]:
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        if run["group"] == "taught" and keep(run):
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


def student_rows(prepared: dict[str, dict], experiment=None) -> list[dict]:
    """Each student as prepared: how it was cut, size, bits per byte on held-out text, and its
    recovery (the cut model's bits per byte before and after distillation from its parent)."""
    specs = {s.name: s for s in experiment.students} if experiment is not None else {}
    rows = []
    for name, student in prepared.items():
        recovery = student.get("recovery") or {}
        rows.append(
            {
                "name": name,
                "cut": how_cut(specs[name]) if name in specs else None,
                "kind": student.get("kind"),
                "params": student.get("params"),
                "bits_per_byte": student.get("bits_per_byte"),
                "recovered": bool(recovery),
                "bits_per_byte_before_recovery": recovery.get("bits_per_byte_before"),
                "bits_per_byte_after_recovery": recovery.get("bits_per_byte_after"),
                "recovery_steps": recovery.get("steps"),
                "recovery_tokens": recovery.get("tokens"),
                "recovery_seconds": recovery.get("seconds"),
            }
        )
    return rows


def build_study(
    experiment,
    splits,
    teachers: list[dict],
    runs: list[dict],
    store: Store,
    skipped: int = 0,
    computed: int = 0,
    prepared: dict[str, dict] | None = None,
) -> dict:
    """The study dict: teachers, every run, the verdict, comparisons and correlations."""
    teacher_rows, judged = [], []
    for t in teachers:
        ids, correct = correct_by_id(store, t.get("evaluation_id"), t.get("metric", "acc"))
        if correct is None and t.get("correct") is not None:
            ids, correct = [ex.id for ex in splits.test], t["correct"]
        ci95 = t.get("ci95") if t.get("metric", "acc") == "acc" or correct is None else list(bootstrap_ci(correct))
        teacher_rows.append(
            {
                "name": t["name"],
                "acc": t["acc"],
                "ci95": ci95,
                "scoring": t.get("scoring"),
                "validation": t.get("validation") or [],
                "params": t.get("params"),
                "peak_memory_mb": t.get("peak_memory_mb"),
                "latency_ms_p50": t.get("latency_ms_p50"),
                "measured": t.get("measured", True),
                "source": t.get("source"),
            }
        )
        if t["acc"] is not None:
            judged.append(
                {
                    "name": t["name"],
                    "acc": t["acc"],
                    "measured": t.get("measured", True),
                    "ids": ids,
                    "correct": correct,
                }
            )
    rows = [_run_row(run) for run in runs]
    candidates = []
    for run, row in zip(runs, rows):
        if row["acc"] is None:
            continue
        ids, correct = correct_by_id(store, run.get("evaluation_id"))
        if correct is None:
            continue
        row["vs_teachers"] = {t["name"]: _versus({**row, "ids": ids, "correct": correct}, t) for t in judged}
        if row["group"] in ("taught", "collaboration"):
            candidates.append({**row, "ids": ids, "correct": correct})
    trained = [r for r in rows if r["group"] in ("taught", "collaboration")]
    return {
        "experiment": experiment.name,
        "task": experiment.task.name,
        "split": experiment.task.test_split,
        "n_test": len(splits.test),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": experiment.model_dump(),
        "config_hash": stable_hash(experiment.model_dump()),
        "data_hash": splits.hashes()["test"],
        "data_origin": splits.origin,
        "versions": versions(),
        "majority_baseline": majority_baseline(splits.test)["acc"],
        "teachers": teacher_rows,
        "students": student_rows(prepared or {}, experiment),
        "runs": rows,
        "verdict": verdict(judged, candidates),
        "comparisons": comparisons(rows),
        "bpb_correlation": {
            "acc_vs_bpb_pearson": pearson([r["bits_per_byte"] for r in trained], [r["acc"] for r in trained]),
            "acc_vs_log_params_pearson": pearson(
                [math.log10(r["params"]) if r["params"] else None for r in trained], [r["acc"] for r in trained]
            ),
        },
        "units": {"computed": computed, "skipped": skipped},
    }


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
