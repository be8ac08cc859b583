"""`render_report`: a `Study` in, report.md, report.html, runs.csv and runs.json out."""

from __future__ import annotations

from pathlib import Path

from tinystudent.report.blocks import all_figures
from tinystudent.report.content import build_report
from tinystudent.report.exports import runs_csv, runs_json, write_bytes, write_text
from tinystudent.report.html import render_html
from tinystudent.report.markdown import render_markdown
from tinystudent.report.study import validate_study
from tinystudent.results import Study

FIGURE_FOLDER = "figures"


def render_report(study: Study, out_dir: Path, origin: str = "study") -> dict[str, Path]:
    """Write the report of one study into `out_dir`.

    Args:
        study: the study (`tinystudent.results.Study`); one stored as JSON (`tinystudent run`'s
            study file, `tinystudent.experiments.study.load_study`) is read with `validate_study`.
            Only `teachers` and `runs` are required.
        out_dir: folder to write into (created if missing; files there are replaced).
        origin: how error messages name the study (its file path when read from one).
    Returns:
        {"markdown": report.md, "html": report.html, "runs_csv": runs.csv, "runs_json": runs.json,
        "figures": the folder of PNGs report.md links to (when there are plots)}. report.html stands
        alone: it needs none of the other files.
    Raises:
        StudyError (a ValueError): the study lacks what the report needs; the message names the record.
        TypeError: `study` is not a `Study` (a dict is read with `validate_study` first).
    """
    if not isinstance(study, Study):
        raise TypeError(
            f"render_report takes a Study, got {type(study).__name__}; read a study dict with "
            "tinystudent.report.validate_study(data) (or Study.from_dict) first"
        )
    validate_study(study, origin)
    out_dir = Path(out_dir)
    blocks = build_report(study)
    figures = out_dir / FIGURE_FOLDER
    for figure in all_figures(blocks):
        write_bytes(figures / f"{figure.name}.png", figure.png)
    title = f"tinystudent report: {study.experiment or 'experiment'}"
    paths = {
        "markdown": write_text(out_dir / "report.md", render_markdown(blocks, FIGURE_FOLDER)),
        "html": write_text(out_dir / "report.html", render_html(blocks, title)),
        "runs_csv": write_text(out_dir / "runs.csv", runs_csv([run.to_dict() for run in study.runs])),
        "runs_json": write_text(out_dir / "runs.json", runs_json(study)),
    }
    if figures.is_dir():
        paths["figures"] = figures
    return paths
