"""Progress and messages go to stderr; a command's result (its table, the verdict) goes to
stdout, as does `--json`, so `tinystudent eval ... > result.txt` keeps the result."""

from __future__ import annotations

import os
import time
import warnings

from rich.console import Console

from tinystudent.redact import redact

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


def quiet_libraries() -> None:
    """Keep library chatter off the terminal; our own messages say what matters."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*past_key_values.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def info(message: str) -> None:
    stderr.print(f"[dim]tinystudent:[/dim] {redact(message)}")


def warn(message: str) -> None:
    stderr.print(f"[yellow]tinystudent warning:[/yellow] {redact(message)}")


def progress(interval_s: float | None = None):
    """A progress display on stderr (stdout stays free for `--json`); add tasks with a `status` field.

    On a terminal it is a rich bar. When stderr goes to a file or a pipe (a job log) a bar would
    show nothing until the end, so a plain line (count, rate, time left) is printed every
    `interval_s` seconds instead (default 30, or $TINYSTUDENT_PROGRESS_SECONDS).
    """
    if not stderr.is_terminal:
        return PlainProgress(interval_s if interval_s is not None else _progress_interval())
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=stderr,
        transient=False,
    )


def _progress_interval() -> float:
    raw = os.environ.get("TINYSTUDENT_PROGRESS_SECONDS", "30")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ValueError(f"TINYSTUDENT_PROGRESS_SECONDS must be a number of seconds, got {raw!r}") from None


class PlainProgress:
    """The part of rich's `Progress` the commands use, printing a line at a steady interval."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        for task in self.tasks.values():
            if task["completed"] != task["shown"]:
                self._print(task)

    def add_task(self, description: str, total: float | None = None, status: str = "", **_) -> int:
        now = time.monotonic()
        self.tasks[len(self.tasks)] = {
            "description": description,
            "total": total,
            "completed": 0,
            "status": status,
            "started": now,
            "last": now,
            "shown": 0,
        }
        return len(self.tasks) - 1

    def update(
        self,
        task_id: int,
        advance: float | None = None,
        completed: float | None = None,
        total: float | None = None,
        status: str | None = None,
        **_,
    ) -> None:
        task = self.tasks[task_id]
        task["completed"] = completed if completed is not None else task["completed"] + (advance or 0)
        task["total"] = total if total is not None else task["total"]
        task["status"] = status if status is not None else task["status"]
        if time.monotonic() - task["last"] >= self.interval_s:
            self._print(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _print(self, task: dict) -> None:
        now = time.monotonic()
        task["last"], task["shown"] = now, task["completed"]
        done, total, elapsed = task["completed"], task["total"], now - task["started"]
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{done:g}/{total:g}" if total else f"{done:g}"
        left = f", about {_duration((total - done) / rate)} left" if total and rate > 0 else ""
        status = f" ({task['status']})" if task["status"] else ""
        stderr.print(
            f"tinystudent: {task['description']}: {count}, {rate:.3g}/s{left}, {_duration(elapsed)} so far{status}",
            markup=False,
        )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
