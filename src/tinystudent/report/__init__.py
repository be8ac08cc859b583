"""The study's report: verdict first, then plots, comparisons and every run.

`render_report(study, out_dir)` writes report.md (reads as plain text), report.html (one
self-contained page), runs.csv and runs.json from a `tinystudent.results.Study`; a study stored as
JSON is read back with `validate_study`. Nothing here touches models or the database.
"""

from tinystudent.report.content import build_report
from tinystudent.report.render import render_report
from tinystudent.report.study import StudyError, pareto_frontier, validate_study
from tinystudent.report.verdict import verdict_sentence, verdict_text

__all__ = [
    "render_report",
    "build_report",
    "validate_study",
    "StudyError",
    "pareto_frontier",
    "verdict_sentence",
    "verdict_text",
]
