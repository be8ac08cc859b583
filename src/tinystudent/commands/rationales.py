"""`tinystudent rationales`: bring rationales written elsewhere into the teacher cache, and export them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tinystudent.commands.app import app, emit_json, friendly_errors
from tinystudent.log import stderr

rationales_app = typer.Typer(
    help="Import rationales (TinyLLM files, JSONL) into the teacher cache, or export cached ones as JSONL.",
    no_args_is_help=True,
)
app.add_typer(rationales_app, name="rationales")

DB_HELP = "SQLite results database [default: $TINYSTUDENT_DB or tinystudent-results/results.sqlite]."


@rationales_app.command("import-tinyllm")
@friendly_errors
def import_tinyllm(
    folder: Path = typer.Argument(
        ...,
        help="A TinyLLM task folder, e.g. shared/data/tinyllm/bioasq, or "
        "`bioasq` for the copy shipped with tinystudent (train and validation).",
    ),
    split: str = typer.Option("train", help="train, validation (valid) or test."),
    db: Optional[Path] = typer.Option(None, help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Import TinyLLM's FLAN-T5-XL and LLaMA-2-chat rationales for one split (the task is the folder,
    so train with `--task FOLDER`). Refused when the files do not line up with the questions."""
    from tinystudent.store import Store
    from tinystudent.teachers import read_tinyllm, store_rationales, task_key

    if str(folder) == "bioasq" and not folder.exists():
        found = _bundled_import(split)
    else:
        found = read_tinyllm(folder, split)
    with Store(db) as store:
        stored = store_rationales(store, found.rationales, str(folder), found.questions)
    per_teacher = {t: len(v) for t, v in found.by_teacher().items()}
    result = {
        "task": task_key(str(folder)),
        "split": found.split,
        "questions": len(found.questions),
        "stored": stored,
        "rationales": per_teacher,
        "without_rationale": {t: len(ids) for t, ids in found.missing.items()},
        "files": found.files,
        "db": str(store.path),
    }
    if as_json:
        emit_json(result)
        return
    stderr.print(f"{result['questions']} questions in {folder} ({found.split}), {len(found.files)} rationale files")
    for teacher, count in per_teacher.items():
        stderr.print(
            f"  {teacher}: {count} rationales ({result['without_rationale'][teacher]} questions "
            "have none: empty, 'nan' or only the trigger phrase)"
        )
    stderr.print(f"stored {stored} in {store.path} as task {result['task']}")


def _bundled_import(split: str):
    """The shipped BioASQ rationales, shaped like a TinyLLM import (task `bioasq`)."""
    from tinystudent.tasks import load_task, normalize_split
    from tinystudent.teachers import FLAN, LLAMA, read_bundled
    from tinystudent.teachers.rationale_files import TinyLLMImport

    split = normalize_split(split)
    questions = load_task("bioasq").split(split)
    rationales = read_bundled(split)
    present = {(r.teacher, r.example_id) for r in rationales}
    missing = {t: [q.id for q in questions if (t, q.id) not in present] for t in (FLAN, LLAMA)}
    return TinyLLMImport(split, questions, rationales, ["bundled: bioasq.json.gz"], missing)


@rationales_app.command("import")
@friendly_errors
def import_jsonl(
    file: Path = typer.Argument(..., help="JSONL with one {id, teacher, rationale, answer?} per line."),
    task: str = typer.Option(..., "--task", "-t", help="The task the rationales belong to (ids are checked)."),
    db: Optional[Path] = typer.Option(None, help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Import rationales from JSONL; every id must be a question of the task."""
    from tinystudent.store import Store
    from tinystudent.tasks import load_task
    from tinystudent.teachers import read_rationales_jsonl, store_rationales

    data = load_task(task)
    questions = [ex for examples in data.splits.values() for ex in examples]
    found = read_rationales_jsonl(file, questions)
    with Store(db) as store:
        stored = store_rationales(store, found, task, questions)
    teachers = sorted({r.teacher for r in found})
    if as_json:
        emit_json({"file": str(file), "task": task, "stored": stored, "teachers": teachers, "db": str(store.path)})
    else:
        stderr.print(f"stored {stored} rationales from {file} ({', '.join(teachers)}) in {store.path}")


@rationales_app.command("export")
@friendly_errors
def export_jsonl(
    file: Path = typer.Argument(..., help="Where to write the JSONL."),
    teacher: Optional[str] = typer.Option(None, help="Only this teacher."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Only this task."),
    strategy: Optional[str] = typer.Option(None, help="Only this strategy (e.g. imported, teacher_forcing_cot)."),
    db: Optional[Path] = typer.Option(None, help=DB_HELP),
    allow_empty: bool = typer.Option(
        False, "--allow-empty", help="Write an empty file when no cached rationale matches (else an error)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Export cached rationales as JSONL (`tinystudent rationales import` reads it back). Finding
    none is an error, and writes nothing, unless --allow-empty."""
    from tinystudent.store import Store
    from tinystudent.teachers import export_rationales_jsonl
    from tinystudent.teachers.cache import rows_for

    with Store(db, read_only=True) as store:
        if not allow_empty and not any(row["text"] for row in rows_for(store, teacher, task, strategy)):
            chosen = [f"{k} {v}" for k, v in (("teacher", teacher), ("task", task), ("strategy", strategy)) if v]
            raise ValueError(
                f"{store.path}: no cached rationales{' of ' + ', '.join(chosen) if chosen else ''}, so nothing "
                f"was exported and {file} was not written (--allow-empty writes an empty file)"
            )
        count = export_rationales_jsonl(store, file, teacher, task, strategy)
    if as_json:
        emit_json({"file": str(file), "exported": count, "db": str(store.path)})
    else:
        stderr.print(f"wrote {count} rationales to {file}")
