"""A realistic study dict, shaped exactly as the experiment runner produces it, for the report tests.

Two teachers (SmolLM2-135M-Instruct measured, LLaMA-2-chat-7B reported only), four students of
different sizes trained several ways, collaboration rows (mutual learning, an ensemble, a debate)
with summed cost, an untrained student, a settled verdict and an unsettled one with a closest run.
"""

from __future__ import annotations

import json

import pytest

from tinystudent.results import Study

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLAMA = "llama-2-chat-7b"

STUDENTS = {  # name: (params, peak memory MB, latency ms, bits per byte before training)
    "minilm-l6": (22_713_216, 310.0, 9.0, None),
    "smollm2-first4": (30_220_416, 420.0, 14.0, 1.62),
    "smollm2-first8": (45_000_000, 560.0, 21.0, 1.31),
    "smollm2-first16": (76_520_448, 880.0, 33.0, 1.12),
}


def _run(student: str, method: str, objective: str, acc: float, group: str = "taught", seed: int = 0, **extra) -> dict:
    params, memory, latency, bpb = STUDENTS.get(student, (None, None, None, None))
    run = {
        "run_key": f"{abs(hash((student, method, objective, seed))) % 16**12:012x}",
        "label": f"{student} / {method} / {objective} / seed {seed}",
        "student": student,
        "params": params,
        "method": method,
        "objective": objective,
        "seed": seed,
        "group": group,
        "acc": acc,
        "ci95": [round(acc - 0.068, 4), round(acc + 0.066, 4)],
        "peak_memory_mb": memory,
        "latency_ms_p50": latency,
        "bits_per_byte": bpb,
        "train_seconds": None if group == "untrained" else 95.0 + params / 1e6,
        "status": "done",
    }
    run.update(extra)
    return run


def realistic_study() -> dict:
    runs = [
        _run("minilm-l6", "full", "answer", 0.385, bits_per_byte=None),
        _run("smollm2-first4", "full", "answer", 0.33),
        _run("smollm2-first4", "lora", "answer", 0.31),
        _run("smollm2-first8", "full", "answer", 0.415),
        _run("smollm2-first8", "lora", "answer", 0.38),
        _run("smollm2-first8", "full", "rationale:smollm2", 0.445),
        _run("smollm2-first8", "full", "rationale:all", 0.47),
        _run("smollm2-first8", "full", "choice_kd", 0.455),
        _run("smollm2-first16", "full", "answer", 0.50),
        _run("smollm2-first16", "lora", "answer", 0.475),
        _run("smollm2-first16", "full", "rationale:all", 0.555),
        _run("smollm2-first8", "full", "untrained", 0.285, group="untrained"),
        # Collaboration rows: the runner has already summed the members' cost.
        {
            **_run("smollm2-first4", "full", "mutual", 0.36, group="collaboration"),
            "label": "mutual: 2 x smollm2-first4 / full / seed 0",
            "student": "2 x smollm2-first4",
            "members": ["smollm2-first4#a", "smollm2-first4#b"],
            "params": 60_440_832,
            "peak_memory_mb": 840.0,
            "latency_ms_p50": 28.0,
            "bits_per_byte": None,
        },
        {
            **_run("smollm2-first8", "full", "ensemble:avg", 0.49, group="collaboration"),
            "label": "ensemble:avg of smollm2-first4 + smollm2-first8 + smollm2-first16",
            "student": "ensemble",
            "members": ["smollm2-first4", "smollm2-first8", "smollm2-first16"],
            "params": 151_740_864,
            "peak_memory_mb": 1860.0,
            "latency_ms_p50": 68.0,
            "bits_per_byte": None,
        },
        {
            **_run("smollm2-first8", "full", "debate", 0.435, group="collaboration"),
            "label": "debate: smollm2-first8 x 2, 2 rounds",
            "student": "debate",
            "members": ["smollm2-first8#a", "smollm2-first8#b"],
            "params": 90_000_000,
            "peak_memory_mb": 1120.0,
            "latency_ms_p50": 640.0,
            "bits_per_byte": None,
        },
        # A run that failed: listed in the runs table and exports, never plotted.
        {**_run("smollm2-first16", "lora", "rationale:all", 0.0), "acc": None, "ci95": None, "status": "failed"},
    ]
    winner = runs[10]
    closest = {
        "label": winner["label"],
        "acc": 0.555,
        "params": winner["params"],
        "peak_memory_mb": winner["peak_memory_mb"],
        "diff": -0.1825,
        "diff_ci95": [-0.2525, -0.1125],
        "p_value": 1.0,
    }
    return {
        "experiment": "quickstart",
        "task": "arc_easy",
        "split": "test",
        "n_test": 200,
        "created": "2026-11-26T06:00:00Z",
        "config_hash": "ab12cd34ef56",
        "data_hash": "cd34ef56ab12",
        "versions": {"tinystudent": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0", "python": "3.12.3"},
        "majority_baseline": 0.27,
        "teachers": [
            {
                "name": SMOL,
                "acc": 0.52,
                "ci95": [0.45, 0.59],
                "params": 134_515_008,
                "peak_memory_mb": 1900.0,
                "latency_ms_p50": 180.0,
                "measured": True,
                "source": None,
            },
            {
                "name": LLAMA,
                "acc": 0.7375,
                "ci95": None,
                "params": 6_738_415_616,
                "peak_memory_mb": None,
                "latency_ms_p50": None,
                "measured": False,
                "source": "Tian et al. 2024, Table 2",
            },
        ],
        "runs": runs,
        "verdict": [
            {
                "teacher": SMOL,
                "teacher_acc": 0.52,
                "teacher_measured": True,
                "by": "params",
                "smallest_winner": winner["label"],
                "winner_acc": 0.555,
                "winner_params": winner["params"],
                "winner_peak_memory_mb": winner["peak_memory_mb"],
                "diff": 0.035,
                "diff_ci95": [-0.005, 0.075],
                "p_value": 0.04,
                "closest": None,
                "best_teacher": False,
            },
            {
                "teacher": SMOL,
                "teacher_acc": 0.52,
                "teacher_measured": True,
                "by": "peak_memory_mb",
                "smallest_winner": winner["label"],
                "winner_acc": 0.555,
                "winner_params": winner["params"],
                "winner_peak_memory_mb": winner["peak_memory_mb"],
                "diff": 0.035,
                "diff_ci95": [-0.005, 0.075],
                "p_value": 0.04,
                "closest": None,
                "best_teacher": False,
            },
            {
                "teacher": LLAMA,
                "teacher_acc": 0.7375,
                "teacher_measured": False,
                "by": "params",
                "smallest_winner": None,
                "winner_acc": None,
                "winner_params": None,
                "winner_peak_memory_mb": None,
                "diff": None,
                "diff_ci95": None,
                "p_value": None,
                "closest": closest,
                "best_teacher": True,
            },
            {
                "teacher": LLAMA,
                "teacher_acc": 0.7375,
                "teacher_measured": False,
                "by": "peak_memory_mb",
                "smallest_winner": None,
                "winner_acc": None,
                "winner_params": None,
                "winner_peak_memory_mb": None,
                "diff": None,
                "diff_ci95": None,
                "p_value": None,
                "closest": closest,
                "best_teacher": True,
            },
        ],
        "comparisons": {
            "one_vs_several_teachers": [
                {
                    "student": "smollm2-first8",
                    "method": "full",
                    "rows": [
                        {"objective": "rationale:smollm2", "acc": 0.445, "ci95": [0.377, 0.511]},
                        {"objective": "rationale:all", "acc": 0.47, "ci95": [0.402, 0.536]},
                    ],
                }
            ],
            "full_vs_lora": [
                {
                    "student": student,
                    "objective": "answer",
                    "rows": [
                        {"method": run["method"], "acc": run["acc"], "ci95": run["ci95"]}
                        for run in runs
                        if run["student"] == student and run["objective"] == "answer"
                    ],
                }
                for student in ("smollm2-first4", "smollm2-first8", "smollm2-first16")
            ],
            "objectives": [
                {
                    "student": "smollm2-first8",
                    "method": "full",
                    "rows": [
                        {"objective": run["objective"], "acc": run["acc"], "ci95": run["ci95"]}
                        for run in runs[3:8]
                        if run["method"] == "full"
                    ],
                }
            ],
        },
        "students": [
            {
                "name": "smollm2-first8",
                "cut": "layers first:8",
                "kind": "causal",
                "params": 45_000_000,
                "bits_per_byte": 1.31,
                "recovered": True,
                "bits_per_byte_before_recovery": 4.62,
                "bits_per_byte_after_recovery": 1.31,
                "recovery_steps": 16,
                "recovery_tokens": 8192,
                "recovery_seconds": 120.5,
            },
            {
                "name": "minilm-l6",
                "cut": "-",
                "kind": "encoder",
                "params": 22_713_216,
                "bits_per_byte": None,
                "recovered": False,
                "bits_per_byte_before_recovery": None,
                "bits_per_byte_after_recovery": None,
                "recovery_steps": None,
                "recovery_tokens": None,
                "recovery_seconds": None,
            },
        ],
        "bpb_correlation": {"acc_vs_bpb_pearson": -0.81, "acc_vs_log_params_pearson": 0.74},
        "search": {"trained": 3, "ladder": 5, "saved": 2},
    }


def realistic() -> Study:
    """`realistic_study()` read as the report reads a stored study."""
    return Study.from_dict(realistic_study())


@pytest.mark.slow
def test_the_runners_study_reads_back_as_its_records_and_the_sample_has_its_shape(tmp_path, tiny_causal, tiny_encoder):
    """The real runner on a tiny experiment: its study reads back as a `Study` (and writes out
    unchanged), passes the report's check, and has every field the sample above uses."""
    from test_experiments import tiny_experiment, write_toy_task

    from tinystudent.experiments.config import load_experiment
    from tinystudent.experiments.runner import run_experiment
    from tinystudent.experiments.study import load_study
    from tinystudent.report import validate_study
    from tinystudent.results import RunResult, StudentResult, TeacherResult
    from tinystudent.store import Store

    collaboration = "collaboration: {members: [small, full], ensemble: true}\n"
    toy_task = write_toy_task(tmp_path)
    config = tiny_experiment(tmp_path, tiny_causal, tiny_causal, tiny_encoder, toy_task, collaboration)
    experiment = load_experiment(config, ["methods={finetune: [full], objectives: [answer]}"])
    with Store(tmp_path / "r.sqlite") as store:
        study = run_experiment(experiment, store, tmp_path / "out")
        stored = load_study(store, "tiny")
    assert stored == json.loads(json.dumps(study))  # what the store holds is the study
    typed = Study.from_dict(stored)
    assert typed.to_dict() == stored and validate_study(stored) == typed
    assert {run.group for run in typed.runs} == {"taught", "collaboration", "untrained"}
    assert [(t.name, t.measured) for t in typed.teachers] == [("teach", True)]
    assert [(s.name, s.cut) for s in typed.students] == [("small", "layers first:1"), ("full", "-"), ("enc", "-")]
    assert {entry["teacher"] for entry in typed.verdict} == {"teach"}
    sample = realistic_study()
    assert set(sample) <= set(stored)
    fields = lambda record: set(record.__dataclass_fields__) - {"additional"}  # noqa: E731
    assert all(set(run) <= fields(RunResult) for run in sample["runs"])
    assert all(set(teacher) <= fields(TeacherResult) for teacher in sample["teachers"])
    assert all(set(student) <= fields(StudentResult) for student in sample["students"])
    assert not Study.from_dict(sample).additional  # nothing in the sample that the runner does not make


def test_best_run_compares_only_runs_measured_on_the_same_questions():
    from tinystudent.report.study import best_run
    from tinystudent.results import RunResult

    debate = RunResult(label="debate (20 test questions)", acc=0.40, n=20, params=2)
    ensemble = RunResult(label="ensemble", acc=0.29, n=100, params=2)
    assert best_run([debate, ensemble]) is ensemble
    assert best_run([debate]) is debate
