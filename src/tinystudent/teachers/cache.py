"""The teacher cache: the `teacher_outputs` table of the results database.

A row's key is the SHA-256 of everything that determines the model's output: the teacher's
identity (weights hash, or server URL and model name), the full prompt exactly as sent, and the
generation settings; the task, question id and strategy are in it too, so each row belongs to one
question. Each output is written in its own transaction the moment it exists, so a run killed at
any point (even `kill -9`) keeps everything it finished. `INSERT ... ON CONFLICT DO NOTHING`
makes two processes that compute the same output at once agree on the first one written.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tinystudent.store import Store
from tinystudent.tasks.catalog import TASKS
from tinystudent.teachers.base import TeacherOutput

KEY_VERSION = 1


def task_key(task: str) -> str:
    """How a task is named in the cache: a named task as is, a path as its absolute form, so
    `../shared/data/tinyllm/bioasq` and its absolute path find the same rows."""
    if task in TASKS:
        return task
    path = Path(task).expanduser()
    return str(path.resolve()) if path.exists() else task


def teacher_key(name: str) -> str:
    """How a teacher is named in the cache: a local folder or file as its absolute path."""
    path = Path(name).expanduser()
    return str(path.resolve()) if ("/" in name or name.startswith(".")) and path.exists() else name


def cache_key(**parts) -> str:
    """SHA-256 over the parts, as canonical JSON."""
    payload = json.dumps({"v": KEY_VERSION, **parts}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def fetch(store: Store, keys: list[str]) -> dict[str, dict]:
    """Cached rows for the keys that are present (chunked below SQLite's parameter limit)."""
    return {row["cache_key"]: dict(row) for row in store.rows_by_key("teacher_outputs", "cache_key", keys)}


def save(store: Store, output: TeacherOutput, prompt: str | None, replace: bool = False) -> None:
    """Write one output in its own transaction (the first writer of a key wins unless `replace`)."""
    conflict = (
        (
            "DO UPDATE SET created=excluded.created, text=excluded.text, answer=excluded.answer, "
            "choice_logprobs=excluded.choice_logprobs, matches_gold=excluded.matches_gold, "
            "meta=excluded.meta"
        )
        if replace
        else "DO NOTHING"
    )
    with store.transaction() as db:
        db.execute(
            "INSERT INTO teacher_outputs (cache_key, created, teacher, task, example_id, strategy, prompt,"
            " text, answer, choice_logprobs, matches_gold, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            f" ON CONFLICT(cache_key) {conflict}",
            (
                output.cache_key,
                time.time(),
                output.teacher,
                output.task,
                output.example_id,
                output.strategy,
                prompt,
                output.text,
                output.answer,
                json.dumps(output.choice_logprobs) if output.choice_logprobs is not None else None,
                None if output.matches_gold is None else int(output.matches_gold),
                json.dumps(output.meta, ensure_ascii=False, default=str),
            ),
        )


def update_text(store: Store, output: TeacherOutput) -> None:
    """Rewrite a cached output's cleaned text (clean-up settings changed; the model is not called)."""
    with store.transaction() as db:
        db.execute(
            "UPDATE teacher_outputs SET text=?, answer=?, matches_gold=?, meta=? WHERE cache_key=?",
            (
                output.text,
                output.answer,
                None if output.matches_gold is None else int(output.matches_gold),
                json.dumps(output.meta, ensure_ascii=False, default=str),
                output.cache_key,
            ),
        )


def to_output(row: dict) -> TeacherOutput:
    """A cached row as a `TeacherOutput`."""
    logprobs = json.loads(row["choice_logprobs"]) if row.get("choice_logprobs") else None
    matches = row.get("matches_gold")
    return TeacherOutput(
        teacher=row["teacher"],
        example_id=row["example_id"],
        strategy=row["strategy"],
        text=row.get("text"),
        answer=row.get("answer"),
        choice_logprobs=logprobs,
        matches_gold=None if matches is None else bool(matches),
        cache_key=row["cache_key"],
        task=row.get("task"),
        meta=json.loads(row["meta"]) if row.get("meta") else {},
    )


def rows_for(
    store: Store, teacher: str | None = None, task: str | None = None, strategy: str | None = None
) -> list[dict]:
    """Cached rows matching the filters given, oldest first."""
    where, values = [], []
    for column, value in (
        ("teacher", teacher and teacher_key(teacher)),
        ("task", task and task_key(task)),
        ("strategy", strategy),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            values.append(value)
    clause = " AND ".join(where) or "1"
    rows = store.db.execute(f"SELECT * FROM teacher_outputs WHERE {clause} ORDER BY created, rowid", values)
    return [dict(r) for r in rows]
