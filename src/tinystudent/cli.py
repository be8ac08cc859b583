"""The `tinystudent` command: parses arguments and calls one function per subcommand."""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from typing import Iterable, Optional

import click
import typer

from tinystudent.log import stderr
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


def quiet_libraries() -> None:
    """Keep library chatter off the terminal; our own messages say what matters."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*past_key_values.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def friendly_errors(fn):
    """Turn expected errors (bad input, missing files) into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from tinystudent.tasks.schema import TaskFormatError

        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, typer.Exit):
            raise  # a command's own exit code (a RuntimeError to click), not an error to report
        except (TaskFormatError, FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            from rich.markup import escape

            stderr.print(f"[red]error:[/red] {escape(redact(message))}")  # brackets in it are text
            raise typer.Exit(2) from None

    return wrapper


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

    from tinystudent.log import stdout

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, str(value))
    stdout.print(table)


def _register_commands() -> None:
    """Each module of `tinystudent.commands` adds its subcommand(s) to `app` when imported."""
    import importlib
    import pkgutil

    import tinystudent.commands as commands

    for module in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"tinystudent.commands.{module}")


def main() -> None:  # pragma: no cover - entry point for `python -m tinystudent`
    app()


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
