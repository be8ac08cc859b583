"""`tinystudent run`: the whole study from one experiment YAML, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tinystudent.commands.app import app, emit_json, friendly_errors
from tinystudent.folders import check_output_folder
from tinystudent.log import quiet_libraries, stderr, stdout

EXAMPLES = Path(__file__).resolve().parents[1] / "experiments" / "examples"


def experiment_path(name: str) -> Path:
    """A YAML path, or the name of an experiment shipped with tinystudent (`quickstart`)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = EXAMPLES / f"{name}.yaml"
    if shipped.exists():
        return shipped
    known = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))
    raise FileNotFoundError(f"{name}: no such experiment file, and not a shipped experiment ({', '.join(known)})")


@app.command("run")
@friendly_errors
def run_command(
    experiment: str = typer.Argument(
        ...,
        help="An experiment YAML, or a shipped one: quickstart, bioasq "
        "(both offline on a CPU), tinyllm_bioasq, tinyllm_obqa, tinyllm_arc, "
        "modern_ladder.",
    ),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.path=value overrides, e.g. training.steps=10."),
    out: Optional[Path] = typer.Option(
        None, help="Folder for checkpoints, logs and the report (default: tinystudent-results/<experiment name>)."
    ),
    db: Optional[Path] = typer.Option(
        None, help="SQLite results database (default: $TINYSTUDENT_DB or tinystudent-results/results.sqlite)."
    ),
    check: bool = typer.Option(False, "--check", help="Only validate the experiment and print its plan."),
    show_plan: bool = typer.Option(
        False,
        "--plan",
        help="Print the units the study will run (counts per kind, what the database already holds, "
        "the critical path, estimated hours from earlier units' measured times) and run nothing.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (verdict, runs, report) on stdout."),
    jobs: Optional[int] = typer.Option(
        None,
        "--jobs",
        min=1,
        help="With the local executor: units run at the same time, each in its own process (one GPU "
        "each on a machine with several); the CPU threads are shared among them. Default: the "
        "experiment's executor.jobs (1).",
    ),
    executor: Optional[str] = typer.Option(
        None,
        "--executor",
        help="Where units run: local (this machine), ray (Ray tasks; pip install 'tinystudent[ray]') "
        "or slurm (SLURM jobs through submitit; pip install 'tinystudent[slurm]'). Default: the "
        "experiment's executor.kind (local).",
    ),
) -> None:
    """Run a whole study: measure teachers, get rationales, train every student x method x seed,
    and report the smallest student that beats each teacher. Killed and run again, it resumes."""
    quiet_libraries()
    from tinystudent.experiments.config import load_experiment

    chosen = [f"executor.kind={executor}"] if executor is not None else []
    chosen += [f"executor.jobs={jobs}"] if jobs is not None else []
    spec = load_experiment(experiment_path(experiment), [*(overrides or []), *chosen])
    from tinystudent.experiments.preview import training_runs

    most_training_runs = training_runs(spec)  # every student x method x objective x seed
    stderr.print(
        f"experiment {spec.name}: {len(spec.teachers)} teacher(s), {len(spec.students)} student(s), "
        f"up to {most_training_runs} training run(s)"
    )
    out = check_output_folder(out or Path("tinystudent-results") / spec.name)
    if show_plan:
        print_plan(spec, db, as_json)
    elif check:
        check_experiment(spec, db, as_json, most_training_runs)
    else:
        run_study(spec, db, out, as_json)


def check_experiment(spec, db: Optional[Path], as_json: bool, most_training_runs: int) -> None:
    """`run --check`: the database path, the executor's engine and the study (`check_study`), and
    nothing run; with `as_json`, what was checked as one JSON object."""
    from tinystudent.experiments.executors import check_engine
    from tinystudent.store import Store

    Store.check_path(db)
    check_engine(spec.executor.kind)
    checked = check_study(spec)
    if as_json:
        emit_json({"experiment": spec.name, "valid": True, "training_runs": most_training_runs, **checked})


def run_study(spec, db: Optional[Path], out: Path, as_json: bool) -> None:
    """Run the study (resuming what the database holds), write its report into `out` and print the
    verdict, or with `as_json` one JSON object of the verdict, runs, teachers and report paths."""
    from tinystudent.experiments.runner import run_experiment
    from tinystudent.report import render_report, validate_study, verdict_text
    from tinystudent.store import Store

    with Store(db) as store, store.study_lock(spec.name):  # a second run of the study here is refused
        study = run_experiment(spec, store, out)
    typed = validate_study(study)  # the stored study, read back as a Study
    paths = render_report(typed, out / "report")
    stderr.print(f"units computed {study['units']['computed']}, read back {study['units']['skipped']}")
    if as_json:
        emit_json(
            {
                "verdict": [_verdict_json(v) for v in study["verdict"] if v["by"] == "params"],
                "verdict_by_memory": [_verdict_json(v) for v in study["verdict"] if v["by"] != "params"],
                "runs": study["runs"],
                "teachers": study["teachers"],
                "report": str(paths["html"]),
                "report_markdown": str(paths["markdown"]),
            }
        )
        return
    stdout.print(verdict_text(typed), markup=False)  # "[best]" is text, not a style
    stdout.print(f"report: {paths['markdown']} and {paths['html']}")


def check_study(spec) -> dict:
    """What `run --check` checks beyond the file: the task's questions load, none of the training
    or validation questions is a test question, the plan can be made from them, and the
    tokenizers of the models a same-vocabulary token-level objective pairs match where they are on
    this machine (`vocabularies`); and what it will do (`preview.study_size`), so a typo shows
    before hours are spent."""
    from collections import Counter
    from dataclasses import asdict

    from tinystudent.experiments.data import load_study_data
    from tinystudent.experiments.plan import plan
    from tinystudent.experiments.preview import study_size
    from tinystudent.experiments.vocabularies import check_vocabularies

    data = load_study_data(spec)
    planned = plan(spec, data)
    units = Counter(unit.kind for unit in planned)
    contamination = data.contamination
    learnt = ", ".join(f"{n} {split}" for split, n in contamination["checked"].items())
    dropped = sum(len(ids) for ids in (contamination.get("dropped") or {}).values())
    stderr.print(
        f"questions: train {len(data.splits.train)}, validation {len(data.splits.valid)}, test {len(data.splits.test)}; "
        f"none of the {learnt} questions is a test question"
        + (f" ({dropped} that were are left out of training)" if dropped else "")
    )
    stderr.print("units planned before any has run: " + ", ".join(f"{n} {kind}" for kind, n in units.items()))
    size = study_size(spec, data, planned)
    for line in size.lines():
        stderr.print(line)
    vocabularies = check_vocabularies(spec)  # logit_kd / onpolicy_kd across tokenizers: refused now
    for line in vocabularies.lines():
        stderr.print(line)
    return {
        "units": dict(units),
        "contamination": contamination,
        "size": asdict(size),
        "vocabularies": {"matched": len(vocabularies.matched), "not_checked": len(vocabularies.not_here)},
    }


def print_plan(spec, db: Optional[Path], as_json: bool) -> None:
    """The study's plan, replayed against the database when it exists (never created here)."""
    from dataclasses import asdict

    from tinystudent.experiments.data import load_study_data
    from tinystudent.experiments.executors.resources import unit_resources
    from tinystudent.experiments.preview import describe, preview_plan
    from tinystudent.store import Store

    store = Store.existing(db)  # read-only: nothing is created or changed
    try:
        preview = preview_plan(spec, load_study_data(spec), store)
    finally:
        if store is not None:
            store.close()
    if as_json:
        units = [
            {
                "kind": u.kind,
                "name": u.name,
                "key": u.key,
                "needs": list(u.needs),
                "done": u.key in preview.done,
                "asks_for": asdict(unit_resources(u, spec)),
            }
            for u in preview.units
        ]
        path_keys = [u.key for u in preview.critical_path()]
        emit_json({"experiment": spec.name, "units": units, "critical_path": path_keys, "seconds": preview.seconds})
        return
    for line in describe(preview, spec):
        stdout.print(line)


def _verdict_json(entry: dict) -> dict:
    return {
        "teacher": entry["teacher"],
        "teacher_acc": entry["teacher_acc"],
        "teacher_measured": entry["teacher_measured"],
        "smallest_winner": entry["smallest_winner"],
        "winner_acc": entry["winner_acc"],
        "diff": entry["diff"],
        "diff_ci95": entry["diff_ci95"],
        "p_value": entry["p_value"],
        "closest": entry["closest"],
        "best_teacher": entry["best_teacher"],
    }
