"""The report as Markdown that also reads well as plain text.

Paragraphs are wrapped at 100 characters, tables are pipe tables padded so their columns line
up in any monospace viewer, and there is no HTML: plots are ordinary image links to the PNG files
written next to the report. Names come from users and models, so every text is escaped: a `<` or
`&` in a name is shown as written, never read by a Markdown viewer as a tag or an entity.
"""

from __future__ import annotations

import textwrap

from tinystudent.report.blocks import Block, Bullets, Figure, Heading, Paragraph, Table

WIDTH = 100


def render_markdown(blocks: list[Block], figure_folder: str = "figures") -> str:
    """Markdown text of `blocks`; figures link to `<figure_folder>/<name>.png`."""
    parts = [_render(block, figure_folder) for block in blocks]
    return "\n\n".join(part for part in parts if part) + "\n"


def _render(block: Block, figure_folder: str) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {_inert(block.text)}"
    if isinstance(block, Paragraph):
        return textwrap.fill(_inert(block.text), WIDTH, break_on_hyphens=False, break_long_words=False)
    if isinstance(block, Bullets):
        return "\n".join(
            textwrap.fill(
                _inert(item),
                WIDTH,
                initial_indent="- ",
                subsequent_indent="  ",
                break_on_hyphens=False,
                break_long_words=False,
            )
            for item in block.items
        )
    if isinstance(block, Table):
        return markdown_table(block)
    if isinstance(block, Figure):
        caption = textwrap.fill(_inert(block.caption), WIDTH, break_on_hyphens=False, break_long_words=False)
        title = _inert(block.title).replace("[", "\\[").replace("]", "\\]")
        return f"![{title}]({figure_folder}/{block.name}.png)\n\n{caption}".rstrip()
    raise TypeError(f"no Markdown for {type(block).__name__}")


def markdown_table(table: Table) -> str:
    """A pipe table whose columns are padded to a common width (numbers right-aligned)."""
    header = [_escape(text) for text in table.columns]
    caption = _inert(table.caption) if table.caption else ""
    body = [[_escape(cell) for cell in row] + [""] * (len(header) - len(row)) for row in table.rows]
    widths = [max([3, len(header[i])] + [len(row[i]) for row in body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if table.alignment(i) == "r" else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "| "
        + " | ".join(
            "-" * (widths[i] - 1) + ":" if table.alignment(i) == "r" else "-" * widths[i] for i in range(len(header))
        )
        + " |"
    )
    lines = [line(header), rule, *(line(row) for row in body)]
    if caption:
        lines.insert(0, textwrap.fill(caption, WIDTH, break_on_hyphens=False) + "\n")
    return "\n".join(lines)


def _escape(text: str) -> str:
    """A cell's text: a pipe inside a cell would end it; a newline would end the row."""
    return _inert(str(text)).replace("|", "\\|").replace("\n", " ")


def _inert(text: str) -> str:
    """`text` with `<` and `&` backslash-escaped, so no name becomes HTML in a Markdown viewer."""
    return text.replace("<", "\\<").replace("&", "\\&")
