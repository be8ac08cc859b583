"""The report as a list of blocks, built once and written as Markdown and as HTML.

Keeping content and layout apart means the two files always say the same thing: `content.py`
decides what the report says, `markdown.py` and `html.py` only decide how it looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass
class Heading:
    """A section title; level 1 is the report's title."""

    text: str
    level: int = 2


@dataclass
class Paragraph:
    """Plain text. `callout=True` marks the sentences a reader must not miss (the verdict)."""

    text: str
    callout: bool = False


@dataclass
class Bullets:
    items: list[str]
    callout: bool = False


@dataclass
class Table:
    """Cells are already formatted strings; `align` holds "l" or "r" per column (default "l")."""

    columns: list[str]
    rows: list[list[str]]
    align: list[str] = field(default_factory=list)
    caption: str = ""

    def alignment(self, index: int) -> str:
        return self.align[index] if index < len(self.align) else "l"


@dataclass
class Figure:
    """A plot: `name` is its file stem, `png` its bytes, `caption` says how to read it."""

    name: str
    title: str
    png: bytes
    caption: str = ""


Block = Union[Heading, Paragraph, Bullets, Table, Figure]


def all_figures(blocks: list[Block]) -> list[Figure]:
    """Every figure in reading order."""
    return [block for block in blocks if isinstance(block, Figure)]
