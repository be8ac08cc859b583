"""The report as one self-contained HTML page: CSS inline, plots as base64 PNG, no external URL.

A Content-Security-Policy in the page forbids every network fetch, so what a reader sees offline
is exactly what they would see online. Every piece of text is escaped.
"""

from __future__ import annotations

import base64
import html
import re

from tinystudent.report.blocks import Block, Bullets, Figure, Heading, Paragraph, Table
from tinystudent.report.format import REPORTED

CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --rule: #dfe3ea; --accent: #1f5fa8; --warm: #fff7e6; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color: var(--ink); background: #f6f7f9; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 36px 60px; background: #fff; }
h1 { font-size: 28px; margin: 0 0 6px; }
h2 { font-size: 21px; margin: 38px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--rule); }
h3 { font-size: 16px; margin: 24px 0 8px; color: var(--accent); }
p { margin: 8px 0; }
nav { font-size: 13px; color: var(--muted); margin: 6px 0 18px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.callout { background: var(--warm); border-left: 5px solid #f4a300; padding: 10px 16px 10px 30px;
           margin: 6px 0 14px; font-size: 16px; }
.callout li { margin: 6px 0; }
.table-wrap { overflow-x: auto; margin: 8px 0 18px; }
.caption { color: var(--muted); font-size: 13px; margin: 12px 0 2px; }
table { border-collapse: collapse; font-size: 13.5px; min-width: 40%; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--rule); text-align: left; vertical-align: top; }
th { background: #eef1f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tr.reported td { font-style: italic; background: #fbf3f3; }
tr.reference td { color: var(--muted); background: #fafbfc; }
figure { margin: 14px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; max-width: 900px; }
"""

POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_html(blocks: list[Block], title: str) -> str:
    """One HTML document holding the whole report."""
    body = "\n".join(_render(block) for block in blocks)
    sections = [block for block in blocks if isinstance(block, Heading) and block.level == 2]
    nav = " ".join(f'<a href="#{_anchor(block.text)}">{html.escape(block.text)}</a>' for block in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{_with_nav(body, nav)}\n</main>\n</body>\n</html>\n"
    )


def _with_nav(body: str, nav: str) -> str:
    """The section links go right under the title."""
    head, sep, rest = body.partition("</h1>")
    return f"{head}{sep}\n<nav>{nav}</nav>{rest}" if sep else f"<nav>{nav}</nav>\n{body}"


def _render(block: Block) -> str:
    if isinstance(block, Heading):
        level = min(max(block.level, 1), 6)
        return f'<h{level} id="{_anchor(block.text)}">{html.escape(block.text)}</h{level}>'
    if isinstance(block, Paragraph):
        css = ' class="callout"' if block.callout else ""
        return f"<p{css}>{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        css = ' class="callout"' if block.callout else ""
        items = "".join(f"<li>{html.escape(item)}</li>" for item in block.items)
        return f"<ul{css}>{items}</ul>"
    if isinstance(block, Table):
        return html_table(block)
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure id="{_anchor(block.name)}"><img alt="{html.escape(block.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption><strong>{html.escape(block.title)}.</strong> '
            f"{html.escape(block.caption)}</figcaption></figure>"
        )
    raise TypeError(f"no HTML for {type(block).__name__}")


def html_table(table: Table) -> str:
    """A table; rows about a teacher reported, not measured are set apart, as are reference rows."""

    def cell(tag: str, index: int, text: str) -> str:
        css = ' class="num"' if table.alignment(index) == "r" else ""
        return f"<{tag}{css}>{html.escape(str(text))}</{tag}>"

    head = "".join(cell("th", i, text) for i, text in enumerate(table.columns))
    rows = []
    for row in table.rows:
        reference = bool(row) and (row[0].startswith("teacher ") or row[0] == "majority baseline")
        css = ' class="reported"' if REPORTED in " ".join(row) else ' class="reference"' if reference else ""
        rows.append(f"<tr{css}>" + "".join(cell("td", i, text) for i, text in enumerate(row)) + "</tr>")
    caption = f'<p class="caption">{html.escape(table.caption)}</p>' if table.caption else ""
    return (
        f'{caption}<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
