"""A unit's own database, for workers on other machines (Ray, SLURM).

The results database is written by the driver alone: SQLite over a network file system is not
safe, and Ray workers may share no file system at all. So a worker elsewhere computes its unit
against a database of its own:

1. The driver copies into a `seed` the cached rows the unit may read (every stored bits-per-byte
   measurement and, for the units that ask teachers, the task's teacher cache), so a teacher
   output or a model loss computed once is not computed again on a worker.
2. The worker creates its database from the seed (`create_unit_store`), runs the unit's work
   against it, and hands back the rows the work wrote (`written_rows`): evaluations with their
   predictions, new or changed teacher outputs, new model losses.
3. The driver writes them into the results database in one transaction (`import_rows`) and
   renumbers the evaluation ids the unit's result names (`renumber`).

Rows travel as JSON-ready dicts of column values, never pickles.
"""

from __future__ import annotations

import os
from pathlib import Path

from tinystudent.store import Store

TEACHER_COLUMNS = (
    "cache_key, created, teacher, task, example_id, strategy, prompt, text, answer, choice_logprobs, matches_gold, meta"
)
LOSS_COLUMNS = (
    "created, model, model_identity, corpus, corpus_sha256, window, stride, dtype, bytes, tokens, nll_bits,"
    " bits_per_byte, settings, versions"
)
EVALUATION_COLUMNS = (
    "created, model, model_identity, task, split, mode, n, acc, acc_norm, ci_low, ci_high, majority_baseline,"
    " data_hash, run_key, cost, settings, versions"
)


def _rows(store: Store, sql: str, values: tuple = ()) -> list[dict]:
    return [dict(row) for row in store.db.execute(sql, values)]


ASK_TEACHERS = ("teacher_eval", "teach", "choice_scores")  # the unit kinds that read the teacher cache


def seed_rows(store: Store, task: str, kind: str) -> dict[str, list[dict]]:
    """The cached rows a unit of `kind` in a study on `task` may read: every bits-per-byte
    measurement and, when it asks teachers, the task's teacher outputs."""
    from tinystudent.teachers.cache import rows_for

    return {
        "teacher_outputs": rows_for(store, task=task) if kind in ASK_TEACHERS else [],
        "model_losses": _rows(store, "SELECT * FROM model_losses ORDER BY id"),
    }


def create_unit_store(path: Path, seed: dict[str, list[dict]]) -> None:
    """Create the unit's database at `path` holding the seed, unless an earlier attempt did. It is
    written under another name and renamed, so a worker stopped while seeding leaves no half-seeded
    database behind."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    with Store(partial, journal="delete") as store, store.transaction() as db:
        _insert(db, "teacher_outputs", TEACHER_COLUMNS, seed.get("teacher_outputs", []))
        db.executemany(
            f"INSERT INTO model_losses (id, {LOSS_COLUMNS}) VALUES ({_marks(LOSS_COLUMNS, 1)})",
            [tuple(row[c] for c in ("id", *_names(LOSS_COLUMNS))) for row in seed.get("model_losses", [])],
        )
    os.replace(partial, path)


def written_rows(store: Store, seed: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """What the unit's work wrote to its database: every evaluation (with `predictions`), the
    teacher outputs that are new or differ from the seed, and the model losses not in the seed."""
    seeded = {row["cache_key"]: row for row in seed.get("teacher_outputs", [])}
    seeded_losses = {row["id"] for row in seed.get("model_losses", [])}
    evaluations = _rows(store, "SELECT * FROM evaluations ORDER BY id")
    for evaluation in evaluations:
        evaluation["predictions"] = _rows(
            store, "SELECT * FROM predictions WHERE evaluation_id = ? ORDER BY rowid", (evaluation["id"],)
        )
    outputs = _rows(store, "SELECT * FROM teacher_outputs ORDER BY created, rowid")
    losses = _rows(store, "SELECT * FROM model_losses ORDER BY id")
    return {
        "evaluations": evaluations,
        "teacher_outputs": [row for row in outputs if seeded.get(row["cache_key"]) != row],
        "model_losses": [row for row in losses if row["id"] not in seeded_losses],
    }


def import_rows(store: Store, rows: dict[str, list[dict]]) -> dict[int, int]:
    """Write a unit's rows into the results database in one transaction; returns the unit's
    evaluation ids -> their ids here. An evaluation replaces the one an earlier attempt at the same
    unit stored (one evaluation per unit); a teacher output replaces the cached row of its key."""
    renumbered: dict[int, int] = {}
    with store.transaction() as db:
        for evaluation in rows.get("evaluations", []):
            if evaluation["run_key"] is not None:
                db.execute("DELETE FROM evaluations WHERE run_key = ?", (evaluation["run_key"],))
            cursor = db.execute(
                f"INSERT INTO evaluations ({EVALUATION_COLUMNS}) VALUES ({_marks(EVALUATION_COLUMNS)})",
                tuple(evaluation[c] for c in _names(EVALUATION_COLUMNS)),
            )
            new_id = cursor.lastrowid
            assert new_id is not None
            renumbered[evaluation["id"]] = new_id
            db.executemany(
                "INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        new_id,
                        p["example_id"],
                        p["gold"],
                        p["pred"],
                        p["pred_norm"],
                        p["correct"],
                        p["choice_logprobs"],
                        p["text"],
                    )
                    for p in evaluation["predictions"]
                ],
            )
        updates = ", ".join(f"{c}=excluded.{c}" for c in _names(TEACHER_COLUMNS) if c != "cache_key")
        _insert(db, "teacher_outputs", TEACHER_COLUMNS, rows.get("teacher_outputs", []), f"{updates}")
        _insert(db, "model_losses", LOSS_COLUMNS, rows.get("model_losses", []))
    return renumbered


def renumber(result: object, evaluation_ids: dict[int, int], unit_db: str, db: str) -> object:
    """`result` with every `evaluation_id` it names (also inside lists and dicts) given its id in
    the results database, and the unit's database path replaced by the results database's."""
    if isinstance(result, dict):
        return {
            key: evaluation_ids.get(value, value)
            if key == "evaluation_id" and isinstance(value, int)
            else renumber(value, evaluation_ids, unit_db, db)
            for key, value in result.items()
        }
    if isinstance(result, list):
        return [renumber(value, evaluation_ids, unit_db, db) for value in result]
    return db if result == unit_db else result


def _names(columns: str) -> list[str]:
    return [c.strip() for c in columns.split(",")]


def _marks(columns: str, extra: int = 0) -> str:
    return ",".join("?" * (len(_names(columns)) + extra))


def _insert(db, table: str, columns: str, rows: list[dict], on_conflict_update: str | None = None) -> None:
    conflict = f" ON CONFLICT(cache_key) DO UPDATE SET {on_conflict_update}" if on_conflict_update else ""
    db.executemany(
        f"INSERT INTO {table} ({columns}) VALUES ({_marks(columns)}){conflict}",
        [tuple(row[c] for c in _names(columns)) for row in rows],
    )
