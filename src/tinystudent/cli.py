"""The `tinystudent` command: the typer app (`commands.app`) with every subcommand registered.

Each module of `tinystudent.commands` adds its subcommand(s) to `app` when imported; this module
imports them all, so `tinystudent.cli:app` (the console script) and `main` are the whole command.
"""

from __future__ import annotations

import importlib
import pkgutil

import tinystudent.commands as commands
from tinystudent.commands.app import app


def _register_commands() -> None:
    """Each module of `tinystudent.commands` adds its subcommand(s) to `app` when imported."""
    for module in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"tinystudent.commands.{module}")


def main() -> None:  # pragma: no cover - entry point for `python -m tinystudent`
    app()


_register_commands()

__all__ = ["app", "main"]

if __name__ == "__main__":  # pragma: no cover
    main()
