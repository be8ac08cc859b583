"""`tinystudent report`: the Markdown and HTML report of a study, with CSV and JSON of every run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tinystudent.commands.app import app, emit_json, friendly_errors


@app.command("report")
@friendly_errors
def report_command(
    study: Optional[Path] = typer.Option(
        None,
        "--study",
        help="A study JSON file (what `tinystudent run` records); or use --experiment to read it from the database.",
    ),
    experiment: Optional[str] = typer.Option(
        None, "--experiment", "-e", help="Name of an experiment in the results database (with --db)."
    ),
    db: Optional[Path] = typer.Option(
        None, help="SQLite results database (default: $TINYSTUDENT_DB or tinystudent-results/results.sqlite)."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for report.md, report.html, runs.csv "
        "and runs.json (default: tinystudent-results/reports/<experiment>).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the paths written."),
) -> None:
    """Write the report of a study: verdict first, then plots, comparisons and every run."""
    from tinystudent.report import render_report, validate_study

    if study is not None and experiment is None:
        data, origin, called = read_study_file(study), str(study), study.stem
    elif experiment is not None and study is None:
        data, origin = study_from_database(db, experiment), f"experiment {experiment!r} in {db or 'the database'}"
        called = experiment
    else:
        raise ValueError("give exactly one of --study STUDY.json or --experiment NAME (with --db DB)")
    typed = validate_study(data, origin)
    out = out or Path("tinystudent-results") / "reports" / str(typed.experiment or called)
    paths = render_report(typed, out, origin=origin)
    if as_json:
        emit_json({key: str(path) for key, path in paths.items()})
        return
    for key in ("markdown", "html", "runs_csv", "runs_json"):
        typer.echo(f"wrote {paths[key]}")


def read_study_file(path: Path) -> dict:
    """The study in a JSON file, or an error naming the file and the line of a syntax error."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such study file; `tinystudent run` writes one, or use "
            "--experiment NAME to read the study from the results database"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); "
            "a study file is one JSON object"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; a study file is one JSON object") from None
    except RecursionError:  # Python's own words would name neither the file nor the limit
        raise ValueError(
            f"{path}: JSON nested deeper than about 1,000 levels, the most Python reads; "
            "a study file is one JSON object a few levels deep"
        ) from None


def study_from_database(db: Optional[Path], experiment: str) -> dict:
    """The study of `experiment`, assembled by the experiment runner's `load_study`."""
    from tinystudent.store import Store, default_db_path

    path = Path(db) if db else default_db_path()
    with Store(path, read_only=True) as store:  # refuses a missing, damaged or foreign file
        return _load_study_function()(store, experiment)


def _load_study_function():
    """`tinystudent.experiments.study.load_study`, imported only when the database is asked for."""
    try:
        from tinystudent.experiments.study import load_study
    except ImportError as err:
        missing = getattr(err, "name", None)
        if missing and not missing.startswith("tinystudent"):
            raise  # a third-party package is missing: its own message is the useful one
        raise RuntimeError(
            "reading a study from the database needs tinystudent.experiments.study.load_study, "
            "which this installation does not have; render from a study JSON with "
            "--study STUDY.json instead"
        ) from None
    return load_study
