"""Progress and messages go to stderr; a command's result (its table, the verdict) goes to
stdout, as does `--json`, so `tinystudent eval ... > result.txt` keeps the result."""

from __future__ import annotations

from rich.console import Console

from tinystudent.redact import redact

console = Console(stderr=True, highlight=False, soft_wrap=True)
output = Console(highlight=False, soft_wrap=True)


def info(message: str) -> None:
    console.print(f"[dim]tinystudent:[/dim] {redact(message)}")


def warn(message: str) -> None:
    console.print(f"[yellow]tinystudent warning:[/yellow] {redact(message)}")


def progress():
    """A rich progress bar on stderr (stdout stays free for `--json`); add tasks with a `status` field."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
        console=console, transient=False,
    )
