"""The report of a study: verdict first, reported teachers marked, tables, exports and the CLI."""

from __future__ import annotations

import base64
import csv
import json
import re
import sys
import types

import pytest
from test_report_study import LLAMA, SMOL, realistic, realistic_study
from typer.testing import CliRunner

from tinystudent.cli import app
from tinystudent.report import StudyError, pareto_frontier, render_report, validate_study, verdict_text
from tinystudent.report.blocks import Table
from tinystudent.report.markdown import markdown_table
from tinystudent.results import RunResult, Study

WINNER = "smollm2-first16 / full / rationale:all / seed 0"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    study = realistic_study()
    return study, render_report(Study.from_dict(study), out)


@pytest.fixture(scope="module")
def markdown(rendered) -> str:
    return rendered[1]["markdown"].read_text(encoding="utf-8")


def tables_of(text: str) -> list[list[str]]:
    """Each pipe table of a Markdown text as its list of lines."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def section(text: str, title: str) -> str:
    """The text of one `## title` section, up to the next `## `."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_verdict_comes_first_and_says_who_beats_whom(markdown):
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings[0] == "Verdict"
    assert (
        headings.index("Teachers")
        < headings.index("Accuracy against size")
        < headings.index("Side-by-side comparisons")
        < headings.index("Learning from vs working with")
        < headings.index("Every run")
        < headings.index("Reproducibility")
    )
    verdict = " ".join(section(markdown, "Verdict").split())  # undo the line wrapping
    # One verdict per teacher, said once for both measures of size, with the size on each.
    assert (
        f"By parameters and peak memory, the smallest student that beats {SMOL} (acc 52.0%) is "
        f"{WINNER} (acc 55.5%, +3.5 points, 95% CI [-0.5, +7.5], p = 0.040), with 76.5M parameters "
        "against the teacher's 134.5M (1.8x smaller) and 880 MB peak memory against the teacher's 1.9 GB "
        "(2.2x smaller)."
    ) in verdict
    # The unsettled verdict: nobody beats the reported LLaMA, the closest run is named with its gap.
    assert (
        f"By parameters and peak memory, no student beats {LLAMA} (acc 73.8%, reported, not measured); "
        f"the closest is {WINNER} (acc 55.5%, -18.2 points, 95% CI [-25.2, -11.2], p = 1.000)."
    ) in verdict
    assert verdict.count("the smallest student that beats") == 1 and verdict.count("no student beats") == 1
    assert "By parameters," not in verdict and "By peak memory," not in verdict
    # The best teacher is named first.
    assert verdict.index(f"Against {LLAMA}, the best teacher") < verdict.index(f"Against {SMOL}")


def test_the_verdict_table_has_a_row_per_teacher_and_a_column_per_measure(markdown):
    table = tables_of(section(markdown, "Verdict"))[0]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    header, rows = cells[0], cells[2:]
    assert header == [
        "teacher",
        "teacher acc",
        "smallest student that beats it",
        "student acc",
        "difference (points)",
        "95% CI (points)",
        "p",
        "parameters",
        "peak memory",
        "largest student below that does not",
    ]
    assert rows == [
        [SMOL, "52.0%", WINNER, "55.5%", "+3.5", "[-0.5, +7.5]", "0.040", "76.5M (1.8x smaller)"]
        + ["880 MB (2.2x smaller)", "–"],
        [f"{LLAMA} (reported, not measured) [best]", "73.8%", f"none (closest: {WINNER})", "55.5%", "-18.2"]
        + ["[-25.2, -11.2]", "1.000", "76.5M (88.1x smaller)", "880 MB", "–"],
    ]


def test_a_verdict_that_differs_between_measures_is_said_for_each(tmp_path):
    """Another winner by peak memory is another verdict: each measure keeps its sentence and row."""
    study = realistic_study()
    by_memory = study["verdict"][1]
    assert by_memory["teacher"] == SMOL and by_memory["by"] == "peak_memory_mb"
    small = study["runs"][6]  # smollm2-first8 / full / rationale:all, at 560 MB
    by_memory.update(smallest_winner=small["label"], winner_acc=small["acc"], winner_params=small["params"])
    by_memory.update(winner_peak_memory_mb=small["peak_memory_mb"], diff=0.005, p_value=0.049)
    markdown = render_report(Study.from_dict(study), tmp_path)["markdown"].read_text(encoding="utf-8")
    verdict = " ".join(section(markdown, "Verdict").split())
    assert (
        f"By parameters, the smallest student that beats {SMOL} (acc 52.0%) is {WINNER} (acc 55.5%, "
        "+3.5 points, 95% CI [-0.5, +7.5], p = 0.040), with 76.5M parameters against the teacher's 134.5M "
        "(1.8x smaller)."
    ) in verdict
    assert (
        f"By peak memory, the smallest student that beats {SMOL} (acc 52.0%) is {small['label']} (acc 47.0%, "
        "+0.5 points, 95% CI [-0.5, +7.5], p = 0.049), with 560 MB peak memory against the teacher's 1.9 GB "
        "(3.4x smaller)."
    ) in verdict
    assert f"By parameters and peak memory, no student beats {LLAMA}" in verdict  # still one verdict
    table = tables_of(section(markdown, "Verdict"))[0]
    assert "| judged by " in table[0]
    judged = [line.split("|")[3].strip() for line in table[2:]]
    assert judged == ["parameters", "peak memory", "parameters and peak memory"]


def test_a_winner_at_the_majority_baseline_is_called_so():
    from tinystudent.report import verdict_sentence

    study = realistic()
    entry, teacher = study.verdict[0], study.teachers[0]
    assert "majority baseline" not in verdict_sentence(entry, teacher, study.majority_baseline)
    said = verdict_sentence({**entry, "winner_acc": 0.5556}, teacher, baseline=5 / 9)  # stored rounded
    assert said.endswith(
        "It does no better than always giving the most common answer (the majority baseline, "
        "55.6%): the teacher is beaten, the task is not yet learnt."
    )


def test_verdict_text_for_the_terminal_matches_the_report(markdown):
    text = verdict_text(realistic())
    assert text.startswith("## Verdict\n") and text.strip() in markdown


def test_reported_teacher_is_marked_in_every_table_and_sentence(markdown):
    lines = [line for line in markdown.splitlines() if LLAMA in line and not line.startswith("#")]
    assert len(lines) >= 8
    for table in tables_of(markdown):
        for line in table:
            if LLAMA in line:
                assert "reported, not measured" in line, line
    for line in section(markdown, "Verdict").split("\n- ")[1:]:
        if LLAMA in line:
            assert "reported, not measured" in " ".join(line.split())


def test_tables_are_aligned_plain_text_with_the_baseline(markdown):
    tables = tables_of(markdown)
    assert len(tables) >= 10
    for table in tables:
        assert len({len(line) for line in table}) == 1, table[0]  # padded: columns line up
        assert re.fullmatch(r"\|( -+:? \|)+", table[1]), table[1]
    comparisons = section(markdown, "Side-by-side comparisons")
    compared = tables_of(comparisons)
    assert len(compared) == 5  # one vs several (1), full vs LoRA (3), objectives (1)
    for table in compared:
        baseline = [line for line in table if line.startswith("| majority baseline")]
        assert len(baseline) == 1 and "27.0%" in baseline[0]
    assert "| full " in comparisons and "| lora " in comparisons and "+14.5" in comparisons
    assert re.search(r"\| choice_kd +\| +45\.5% \| \[38\.7%, 52\.1%\] \| +\+18\.5 \|", comparisons)
    assert "<" not in markdown.replace("< 0.001", "")  # no HTML in the Markdown
    assert "None" not in markdown and "nan" not in markdown


def test_learning_from_vs_working_with_puts_groups_beside_teachers(markdown):
    text = section(markdown, "Learning from vs working with")
    rows = {line.split("|")[1].strip(): line for line in tables_of(text)[0][2:]}
    assert "smollm2-first16 / full / rationale:all / seed 0" in rows["best taught student"]
    group = rows["best collaborating group"]
    assert "ensemble:avg" in group and "151.7M" in group and "1.8 GB" in group and "68 ms" in group
    assert "smollm2-first4, smollm2-first8, smollm2-first16" in group
    assert "6.5 points below the best taught student" in " ".join(text.split())
    assert "2.0x its parameters" in " ".join(text.split())


def test_loss_search_and_reproducibility_sections(markdown):
    loss = " ".join(section(markdown, "Pre-training loss as the guide").split())
    assert "bits per byte is -0.81" in loss and "log parameters 0.74" in loss
    assert "figures/accuracy_vs_bpb_and_params.png" in loss
    search = " ".join(section(markdown, "Loss-guided search").split())
    assert "trained 3 of the 5 candidates" in search and "saved 2 training run(s) (40% of the ladder)" in search
    footer = section(markdown, "Reproducibility")
    assert "config hash: ab12cd34ef56" in footer and "data hash: cd34ef56ab12" in footer
    assert re.search(r"\| torch +\| 2\.13\.0 +\|", footer)


def test_recovery_table_gives_bits_per_byte_before_and_after(markdown):
    recovery = section(markdown, "Recovery of cut students")
    row = next(line for line in recovery.splitlines() if line.startswith("| smollm2-first8"))
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "smollm2-first8",
        "layers first:8",
        "45.0M",
        "4.620",
        "1.310",
        "16",
        "8,192",
        "2.0 min",
    ]
    assert "minilm-l6" not in recovery  # never cut, never recovered


def test_markdown_links_plots_that_exist(rendered, markdown):
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown)
    assert links == [
        "figures/accuracy_vs_params.png",
        "figures/accuracy_vs_peak_memory.png",
        "figures/accuracy_vs_bpb_and_params.png",
    ]
    for link in links:
        assert (rendered[1]["markdown"].parent / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_and_json_hold_every_run(rendered):
    study, paths = rendered
    with open(paths["runs_csv"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["label"] for row in rows] == [run["label"] for run in study["runs"]]
    first = rows[0]
    assert (first["acc"], first["ci95_low"], first["ci95_high"], first["params"]) == (
        "0.385",
        "0.317",
        "0.451",
        "22713216",
    )
    ensemble = next(row for row in rows if row["objective"] == "ensemble:avg")
    assert ensemble["members"] == "smollm2-first4;smollm2-first8;smollm2-first16"
    failed = next(row for row in rows if row["status"] == "failed")
    assert failed["acc"] == "" and failed["ci95_low"] == ""
    exported = json.loads(paths["runs_json"].read_text(encoding="utf-8"))
    stored = Study.from_dict(study).to_dict()  # what the store would hold: every field of a run
    assert exported["runs"] == stored["runs"] and exported["teachers"] == stored["teachers"]
    assert all(given.items() <= run.items() for given, run in zip(study["runs"], exported["runs"]))
    assert exported["config_hash"] == "ab12cd34ef56" and exported["experiment"] == "quickstart"


def test_html_is_self_contained(rendered):
    page = rendered[1]["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    assert page.count("reported, not measured") >= 8
    assert '<h2 id="verdict">Verdict</h2>' in page


def test_minimal_study_renders_with_only_teachers_and_runs(tmp_path):
    study = {
        "teachers": [{"name": "t", "acc": 0.5}],
        "runs": [{"label": "s / full / answer / seed 0", "acc": 0.4, "params": 1000}],
    }
    paths = render_report(Study.from_dict(study), tmp_path)
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "This study has no verdict yet" in " ".join(text.split())
    assert "This study has no runs to compare here." in text
    assert "No collaboration runs in this study" in " ".join(text.split())
    assert "Pre-training loss" not in text and "Loss-guided search" not in text
    assert "<img" in paths["html"].read_text(encoding="utf-8")


def test_bad_study_is_an_error_naming_the_record(tmp_path):
    study = realistic_study()
    study["runs"][1]["acc"] = 33  # a percentage where a fraction belongs
    with pytest.raises(
        StudyError,
        match=r"study: runs\[1\] 'smollm2-first4 / full / answer / seed 0': "
        r"'acc' must be a fraction between 0 and 1",
    ):
        validate_study(study)
    with pytest.raises(StudyError, match="'teachers' must be a list"):
        validate_study({"runs": []})
    study = realistic_study()
    study["comparisons"]["full_vs_lora"][2]["rows"] = {"method": "full"}
    with pytest.raises(StudyError, match=r"comparisons.full_vs_lora\[2\]: 'rows' must be a list"):
        validate_study(study)
    typed = realistic()  # a Study built in code is checked the same way before it is rendered
    typed.runs[1].acc = 33
    with pytest.raises(StudyError, match=r"runs\[1\] 'smollm2-first4 / full / answer / seed 0'"):
        render_report(typed, tmp_path)
    with pytest.raises(TypeError, match="render_report takes a Study, got dict"):
        render_report(realistic_study(), tmp_path)


def test_correlations_are_computed_when_the_study_leaves_them_out(tmp_path):
    import numpy as np

    study = realistic_study()
    del study["bpb_correlation"]
    text = " ".join(render_report(Study.from_dict(study), tmp_path)["markdown"].read_text(encoding="utf-8").split())
    runs = [run for run in study["runs"] if run["status"] == "done" and run["bits_per_byte"] is not None]
    accs = [run["acc"] for run in runs]
    by_bpb = np.corrcoef([run["bits_per_byte"] for run in runs], accs)[0, 1]
    by_params = np.corrcoef([np.log10(run["params"]) for run in runs], accs)[0, 1]
    assert f"with bits per byte is {by_bpb:.2f} and with log parameters {by_params:.2f}." in text
    assert by_bpb < -0.5 < 0.5 < by_params


def test_pareto_frontier_keeps_runs_no_other_beats_on_size_and_accuracy():
    runs = [
        RunResult(label=name, params=params, acc=acc)
        for name, params, acc in [
            ("a", 10, 0.30),
            ("b", 20, 0.25),
            ("c", 20, 0.40),
            ("d", 30, 0.40),
            ("e", 50, 0.55),
            ("f", 5, 0.10),
        ]
    ]
    assert [run.label for run in pareto_frontier(runs)] == ["f", "a", "c", "e"]


def test_markdown_table_escapes_pipes_and_right_aligns_numbers():
    text = markdown_table(Table(["name", "acc"], [["a|b", "5.0%"], ["long name", "41.0%"]], align=["l", "r"]))
    assert text.splitlines() == [
        "| name      |   acc |",
        "| --------- | ----: |",
        "| a\\|b      |  5.0% |",
        "| long name | 41.0% |",
    ]


def test_cli_renders_a_study_file(tmp_path):
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps(realistic_study()), encoding="utf-8")
    result = CliRunner().invoke(app, ["report", "--study", str(study_file), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for name in ("report.md", "report.html", "runs.csv", "runs.json"):
        assert f"wrote {tmp_path / 'out' / name}" in result.output
        assert (tmp_path / "out" / name).is_file()


def test_cli_explains_a_broken_study_file(tmp_path):
    study_file = tmp_path / "study.json"
    study_file.write_text('{"teachers": [],\n "runs": [}', encoding="utf-8")
    result = CliRunner().invoke(app, ["report", "--study", str(study_file), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    said = "".join(result.output.split())  # rich wraps long lines; compare without whitespace
    assert f"{study_file}:line2,column".replace(" ", "") in said and "notvalidJSON" in said
    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "exactly one of --study" in result.output


def test_cli_reads_the_study_from_the_database(tmp_path, monkeypatch):
    from tinystudent.store import Store

    db = tmp_path / "results.sqlite"
    Store(db).close()
    seen = {}

    def load_study(store, experiment):  # stands in for the experiment runner's loader
        seen["db"], seen["experiment"] = store.path, experiment
        return realistic_study()

    module = types.ModuleType("tinystudent.experiments.study")
    module.load_study = load_study
    monkeypatch.setitem(sys.modules, "tinystudent.experiments.study", module)
    result = CliRunner().invoke(
        app, ["report", "--db", str(db), "--experiment", "quickstart", "--out", str(tmp_path / "out"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert seen == {"db": db, "experiment": "quickstart"}
    assert json.loads(result.stdout.strip().splitlines()[-1])["html"] == str(tmp_path / "out" / "report.html")


def test_cli_says_clearly_when_the_study_loader_is_missing(tmp_path, monkeypatch):
    from tinystudent.store import Store

    db = tmp_path / "results.sqlite"
    Store(db).close()
    monkeypatch.setitem(sys.modules, "tinystudent.experiments.study", None)  # import fails
    result = CliRunner().invoke(app, ["report", "--db", str(db), "--experiment", "x", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "needs tinystudent.experiments.study.load_study" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["report", "--db", str(tmp_path / "none.sqlite"), "--experiment", "x"])
    assert result.exit_code == 2 and "no results database here" in " ".join(result.output.split())


def test_hostile_names_are_shown_as_text_never_as_html(tmp_path):
    """A teacher, task or student named like HTML must not become a tag in report.md or report.html."""
    script, image = "<script>alert(1)</script>", "<img src=x onerror=alert(2)>"
    study = realistic_study()
    study["task"] = f"arc {script}"
    study["teachers"][0]["name"] = f"teacher {image}"
    study["verdict"] = [
        {**row, "teacher": f"teacher {image}"} if row["teacher"] == SMOL else row for row in study["verdict"]
    ]
    for run in study["runs"]:
        run["label"] = run["label"].replace("smollm2", f"s{image}&amp;")
        run["student"] = run["student"].replace("smollm2", f"s{image}&amp;")
    paths = render_report(Study.from_dict(study), tmp_path)
    text = paths["markdown"].read_text(encoding="utf-8")
    assert image.replace("<", "\\<") in text
    assert re.search(r"(?<!\\)<(script|img)", text) is None
    assert re.search(r"(?<!\\)&amp;", text) is None
    page = paths["html"].read_text(encoding="utf-8")
    assert "<script" not in page and "onerror=alert" not in page.replace("&lt;img src=x onerror=alert", "")
