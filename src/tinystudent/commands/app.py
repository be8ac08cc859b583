"""The typer app every subcommand registers on, and the helpers the subcommands share.

`tinystudent.cli` imports each module of `tinystudent.commands`, so each adds its subcommand(s)
to `app`; this module imports none of them.
"""

from __future__ import annotations

import errno
import functools
import json
import sys
from typing import Iterable, Optional

import click
import typer

from tinystudent.log import stderr, stdout
from tinystudent.redact import redact

app = typer.Typer(
    help="How small can a model be and still beat a larger model on your task, once taught?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """tinystudent: measure teachers, distil them into students of many sizes, and find the
    smallest student that beats each teacher. Every subcommand has its own --help."""
    from tinystudent.threads import configure_threads

    configure_threads()


def friendly_errors(fn):
    """Turn expected errors (bad input, missing files) into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rich.markup import escape  # brackets in a message are text

        from tinystudent.tasks.schema import TaskFormatError

        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, typer.Exit):
            raise  # a command's own exit code (a RuntimeError to click), not an error to report
        except (TaskFormatError, FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
                found = disk_error(err)
                if found is None:
                    raise
                message = found
            elif disk_full(message):  # safetensors says it in a RuntimeError of its own
                message = f"the disk is full ({message}); free space and run again: what was saved before is kept"
            stderr.print(f"[red]error:[/red] {escape(redact(message))}")  # brackets in it are text
            raise typer.Exit(2) from None
        except Exception as err:  # safetensors' own error class says a full disk in words
            if not disk_full(str(err)):
                raise
            stderr.print(
                f"[red]error:[/red] the disk is full ({escape(redact(str(err)))}); free space and run again: "
                "what was saved before is kept"
            )
            raise typer.Exit(2) from None

    return wrapper


def disk_full(message: str) -> bool:
    return "No space left" in message or "disk is full" in message


def disk_error(err: OSError) -> str | None:
    """One line for a full disk or a folder we may not write (the path and the way out); None for
    any other OS error, which is a bug to report whole."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC or disk_full(str(err)):
        return f"the disk is full{where}: free space and run again (what was saved before is kept)"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot write{where}: {err.strerror or 'permission denied'}; make it writable, or point "
            "TINYSTUDENT_CACHE (offline copies, converted models) or --out/--db (results) elsewhere"
        )
    return None


def parse_columns(spec: Optional[str]) -> Optional[dict[str, str]]:
    """`question=q,choices=A|B|C|D,answer=label` -> a column mapping."""
    if not spec:
        return None
    mapping = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ValueError(f"--columns expects field=column pairs separated by commas, got {part!r}")
        key, value = part.split("=", 1)
        mapping[key.strip()] = value.strip()
    return mapping


def emit_json(payload: dict) -> None:
    """Exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def print_measures(title: str, rows: Iterable[tuple[str, object]]) -> None:
    """A table of (measure, value) rows on stdout, the values as `str` writes them, right-aligned."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, str(value))
    stdout.print(table)
