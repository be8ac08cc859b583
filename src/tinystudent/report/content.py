"""What the report says, section by section, as blocks (see blocks.py): verdict first.

Order: title, verdict, teachers, accuracy against size (plots and the Pareto frontier), the
side-by-side comparisons, learning from vs working with, pre-training loss as the guide, the
loss-guided search, every run, reproducibility.
"""

from __future__ import annotations

from tinystudent.report import format as fmt
from tinystudent.report import plots
from tinystudent.report.blocks import Block, Bullets, Figure, Heading, Paragraph, Table
from tinystudent.report.study import (
    COLLABORATION,
    TAUGHT,
    UNTRAINED,
    best_run,
    bpb_correlations,
    finished_runs,
    group_of,
    is_measured,
    pareto_frontier,
    runs_in_group,
)
from tinystudent.report.verdict import verdict_section
from tinystudent.results import RunResult, StudentResult, Study, TeacherResult

RATIONALES_ONLY = "rationales only, not scored"

COMPARISON_TITLES = {
    "one_vs_several_teachers": (
        "One teacher vs several teachers",
        "The same student and budget, taught by one teacher's rationales or by all teachers' together.",
    ),
    "full_vs_lora": ("Full fine-tuning vs LoRA", "The same student and objective, trained both ways."),
    "objectives": ("Each objective", "The same student and method, trained on each objective."),
}


def build_report(study: Study) -> list[Block]:
    """Every block of the report, in reading order, from a validated study."""
    runs = finished_runs(study)
    return [
        *title_section(study, runs),
        *verdict_section(study),
        *teacher_section(study),
        *size_section(study, runs),
        *comparison_section(study),
        *learning_vs_working_section(study),
        *recovery_section(study),
        *loss_section(study, runs),
        *search_section(study),
        *runs_section(study),
        *reproducibility_section(study),
    ]


def title_section(study: Study, runs: list[RunResult]) -> list[Block]:
    experiment = study.experiment or "experiment"
    where = ", ".join(
        part
        for part in (
            f"Task {study.task}" if study.task else "",
            f"{study.split} split" if study.split else "",
            f"{study.n_test} questions" if fmt.is_number(study.n_test) else "",
        )
        if part
    )
    counts = f"{len(study.teachers)} teacher(s), {len(runs)} finished student run(s)" + (
        f" of {len(study.runs)}" if len(runs) != len(study.runs) else ""
    )
    created = f"; created {study.created}" if study.created else ""
    return [
        Heading(f"tinystudent report: {experiment}", 1),
        Paragraph(
            f"{where + '; ' if where else ''}{counts}{created}. Which is the smallest student that beats the teacher?"
        ),
    ]


def teacher_row(teacher: TeacherResult) -> list[str]:
    """Name, accuracy, interval, cost and how the number is known ("reported, not measured")."""
    known = "measured" if is_measured(teacher) else fmt.REPORTED
    if not fmt.is_number(teacher.acc):
        known = RATIONALES_ONLY
    if teacher.source:
        known += f" ({teacher.source})"
    return [
        teacher.name,
        fmt.pct(teacher.acc),
        fmt.pct_interval(teacher.ci95),
        teacher.scoring or fmt.MISSING,
        fmt.params(teacher.params),
        fmt.memory_mb(teacher.peak_memory_mb),
        fmt.milliseconds(teacher.latency_ms_p50),
        known,
    ]


def scored_teachers(study: Study) -> list[TeacherResult]:
    """The teachers with an accuracy (a teacher that only gave rationales has none)."""
    return [teacher for teacher in study.teachers if fmt.is_number(teacher.acc)]


def teacher_section(study: Study) -> list[Block]:
    rows = [teacher_row(teacher) for teacher in study.teachers]
    rows.append(_baseline_row(study, 8))
    blocks: list[Block] = [
        Heading("Teachers"),
        Table(
            ["teacher", "accuracy", "95% CI", "scored as", "parameters", "peak memory", "latency p50", "how known"],
            rows,
            align=["l", "r", "r", "l", "r", "r", "r", "l"],
        ),
    ]
    chosen = [t for t in study.teachers if t.validation]
    if chosen:
        blocks.append(
            Paragraph(
                "Each measured teacher is scored on the test split the way it did best on the validation "
                "split (its best fair shot, chosen without seeing the test questions):"
            )
        )
        blocks.append(
            Table(
                ["teacher", "scored as", "validation accuracy", "chosen"],
                [
                    [
                        t.name,
                        row["scoring"],
                        fmt.pct(row["acc"]),
                        "yes" if row["scoring"] == t.scoring else "",
                    ]
                    for t in chosen
                    for row in t.validation
                ],
                align=["l", "l", "r", "l"],
            )
        )
    return blocks


def _baseline_row(study: Study, width: int, acc_column: int = 1) -> list[str]:
    row = ["majority baseline"] + [""] * (width - 1)
    row[acc_column] = fmt.pct(study.majority_baseline)
    return row


def size_section(study: Study, runs: list[RunResult]) -> list[Block]:
    """Accuracy against parameters (with the Pareto frontier) and against peak memory."""
    blocks: list[Block] = [Heading("Accuracy against size")]
    if not runs:
        return blocks + [Paragraph("No student run has finished yet, so there is nothing to plot.")]
    how = (
        "Each point is one finished run with its 95% interval (colour: objective; hollow: LoRA; "
        "diamond: a collaborating group, whose cost is the sum of its members). Solid lines are "
        "measured teachers, dashed lines teachers reported, not measured; the dotted line is the "
        "majority baseline."
    )
    by_params = plots.accuracy_vs_cost(study, runs, "params", "parameters (log scale)", frontier=True)
    if by_params:
        blocks.append(
            Figure(
                "accuracy_vs_params",
                "Accuracy against parameters",
                by_params,
                how + " The orange staircase is the Pareto frontier: no run is both "
                "smaller and more accurate than a run on it.",
            )
        )
    by_memory = plots.accuracy_vs_cost(study, runs, "peak_memory_mb", "peak inference memory")
    missing = sum(not fmt.is_number(run.peak_memory_mb) for run in runs)
    if by_memory:
        note = f" {missing} run(s) without a measured peak memory are not shown." if missing else ""
        blocks.append(Figure("accuracy_vs_peak_memory", "Accuracy against peak memory", by_memory, how + note))
    frontier = pareto_frontier(runs, "params")
    if frontier:
        blocks.append(Heading("Pareto frontier (parameters vs accuracy)", 3))
        blocks.append(
            Table(
                ["run", "parameters", "accuracy", "95% CI", "peak memory"],
                [
                    [
                        run.label,
                        fmt.params(run.params),
                        fmt.pct(run.acc),
                        fmt.pct_interval(run.ci95),
                        fmt.memory_mb(run.peak_memory_mb),
                    ]
                    for run in frontier
                ],
                align=["l", "r", "r", "r", "r"],
                caption="Runs no other run beats on both size and accuracy, smallest first.",
            )
        )
    return blocks


def comparison_section(study: Study) -> list[Block]:
    """One table per compared group, each with the teachers and the majority baseline beneath."""
    comparisons = study.comparisons or {}
    blocks: list[Block] = [Heading("Side-by-side comparisons")]
    names = list(COMPARISON_TITLES) + [name for name in comparisons if name not in COMPARISON_TITLES]
    for name in names:
        title, explanation = COMPARISON_TITLES.get(name, (name.replace("_", " ").capitalize(), ""))
        blocks.append(Heading(title, 3))
        groups = comparisons.get(name) or []
        if not groups:
            blocks.append(Paragraph("This study has no runs to compare here."))
            continue
        if explanation:
            blocks.append(Paragraph(explanation))
        blocks.extend(comparison_table(study, group) for group in groups)
    return blocks


def comparison_table(study: Study, group: dict) -> Table:
    """Rows of one compared group (the keys that vary, accuracy, interval, points above baseline)."""
    rows_in = group.get("rows") or []
    keys = list(dict.fromkeys(key for row in rows_in for key in row if key not in ("acc", "ci95")))
    baseline = study.majority_baseline
    rows = []
    for row in rows_in:
        above = row.get("acc") - baseline if fmt.is_number(row.get("acc")) and fmt.is_number(baseline) else None
        rows.append(
            [_cell(key, row.get(key)) for key in keys]
            + [fmt.pct(row.get("acc")), fmt.pct_interval(row.get("ci95")), fmt.points(above)]
        )
    width = len(keys) + 3
    for teacher in scored_teachers(study):
        marker = "" if is_measured(teacher) else f" ({fmt.REPORTED})"
        reference = [f"teacher {teacher.name}{marker}"] + [""] * (width - 1)
        reference[len(keys)] = fmt.pct(teacher.acc)
        reference[len(keys) + 1] = fmt.pct_interval(teacher.ci95)
        rows.append(reference)
    rows.append(_baseline_row(study, width, acc_column=len(keys)))
    caption = ", ".join(f"{key} {_cell(key, value)}" for key, value in group.items() if key != "rows")
    return Table(
        [*(key.replace("_", " ") for key in keys), "accuracy", "95% CI", "vs baseline (points)"],
        rows,
        align=["l"] * len(keys) + ["r", "r", "r"],
        caption=caption[:1].upper() + caption[1:],
    )


def _cell(key: str, value) -> str:
    if value is None:
        return fmt.MISSING
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if key == "params":
        return fmt.params(value)
    if key == "peak_memory_mb":
        return fmt.memory_mb(value)
    if key in ("acc", "teacher_acc") or key.endswith("_acc"):
        return fmt.pct(value)
    return str(value)


def _cost_row(role: str, name: str, record: RunResult | TeacherResult, members: str = "") -> list[str]:
    return [
        role,
        name,
        fmt.pct(record.acc),
        fmt.pct_interval(record.ci95),
        fmt.params(record.params),
        fmt.memory_mb(record.peak_memory_mb),
        fmt.milliseconds(record.latency_ms_p50),
        members,
    ]


def learning_vs_working_section(study: Study) -> list[Block]:
    """The best taught student, the best collaborating group and each teacher, in accuracy and cost."""
    taught = best_run(runs_in_group(study, TAUGHT))
    together = best_run(runs_in_group(study, COLLABORATION))
    untrained = best_run(runs_in_group(study, UNTRAINED))
    blocks: list[Block] = [Heading("Learning from vs working with")]
    if together is None:
        blocks.append(
            Paragraph(
                "No collaboration runs in this study (mutual learning, collaborative "
                "teaching, ensembles, debate). Add them to the experiment to compare "
                "learning from a teacher with small models working together."
            )
        )
    rows = []
    if taught:
        rows.append(_cost_row("best taught student", taught.label, taught))
    if together:
        rows.append(_cost_row("best collaborating group", together.label, together, ", ".join(together.members or [])))
    if untrained:
        rows.append(_cost_row("best untrained student", untrained.label, untrained))
    for teacher in scored_teachers(study):
        marker = "" if is_measured(teacher) else f" ({fmt.REPORTED})"
        rows.append(_cost_row("teacher", teacher.name + marker, teacher))
    rows.append(_baseline_row(study, 8, acc_column=2))
    if taught and together:
        blocks.append(Paragraph(_learning_sentence(taught, together)))
    blocks.append(
        Table(
            ["role", "model", "accuracy", "95% CI", "parameters", "peak memory", "latency p50", "members"],
            rows,
            align=["l", "l", "r", "r", "r", "r", "r", "l"],
            caption="A group's cost is the sum of its members' (parameters, memory, latency).",
        )
    )
    return blocks


def _learning_sentence(taught: RunResult, together: RunResult) -> str:
    gap = (together.acc or 0.0) - (taught.acc or 0.0)  # both finished: they have an accuracy
    side = "above" if gap > 0 else "below" if gap < 0 else "level with"
    sentence = (
        f"The best collaborating group ({together.label}, {fmt.pct(together.acc)}) is "
        f"{f'{100 * abs(gap):.1f} points ' if gap else ''}{side} the best taught student "
        f"({taught.label}, {fmt.pct(taught.acc)})"
    )
    mine, theirs = together.params, taught.params
    if fmt.is_number(mine) and fmt.is_number(theirs) and theirs > 0:
        sentence += f" and costs {mine / theirs:.1f}x its parameters ({fmt.params(mine)} vs {fmt.params(theirs)})"
    return sentence + "."


def loss_section(study: Study, runs: list[RunResult]) -> list[Block]:
    """Accuracy against bits per byte beside accuracy against parameters, with both correlations."""
    measured = [run for run in runs if fmt.is_number(run.bits_per_byte)]
    if not measured:
        return []
    correlations = bpb_correlations(study)
    with_bpb = fmt.decimal(correlations["acc_vs_bpb_pearson"], 2)
    with_params = fmt.decimal(correlations["acc_vs_log_params_pearson"], 2)
    blocks: list[Block] = [Heading("Pre-training loss as the guide")]
    blocks.append(
        Paragraph(
            f"Across {len(measured)} run(s) with a bits-per-byte measurement (taken before training), the "
            f"Pearson correlation of accuracy with bits per byte is {with_bpb} "
            f"and with log parameters {with_params}. A strongly "
            "negative first number means lower loss predicts higher accuracy (Du et al. 2024)."
        )
    )
    png = plots.accuracy_vs_bpb_and_params(runs, correlations)
    if png:
        blocks.append(
            Figure(
                "accuracy_vs_bpb_and_params",
                "Accuracy against bits per byte and parameters",
                png,
                "Left: accuracy against the student's bits per byte before training. Right: the "
                "same runs against parameters.",
            )
        )
    by_student: dict[str, RunResult] = {}
    for run in measured:
        name = run.student or run.label
        if name not in by_student or _accuracy(run) > _accuracy(by_student[name]):
            by_student[name] = run
    rows = [
        [name, fmt.params(run.params), fmt.decimal(run.bits_per_byte), fmt.pct(run.acc)]
        for name, run in sorted(by_student.items(), key=lambda item: item[1].bits_per_byte or 0.0)
    ]
    blocks.append(
        Table(
            ["student", "parameters", "bits per byte", "best accuracy"],
            rows,
            align=["l", "r", "r", "r"],
            caption="Each student once, lowest bits per byte first.",
        )
    )
    return blocks


def recovery_section(study: Study) -> list[Block]:
    """Bits per byte of each cut student before and after recovery from its parent."""
    recovered = [s for s in study.students if s.recovered]
    if not recovered:
        return []
    rows = [_recovery_row(s) for s in recovered]
    return [
        Heading("Recovery of cut students"),
        Paragraph(
            "A student cut from a larger model first relearns language from it: distillation "
            "(KL to the parent's next-token distribution) on the task's training text, before "
            "it learns the task. Bits per byte on held-out validation text, lower is better."
        ),
        Table(
            ["student", "cut", "parameters", "bits/byte cut", "bits/byte recovered", "steps", "tokens", "time"],
            rows,
            align=["l", "l", "r", "r", "r", "r", "r", "r"],
        ),
    ]


def _recovery_row(s: StudentResult) -> list[str]:
    return [
        s.name,
        s.cut or fmt.MISSING,
        fmt.params(s.params),
        fmt.decimal(s.bits_per_byte_before_recovery),
        fmt.decimal(s.bits_per_byte_after_recovery),
        str(s.recovery_steps or fmt.MISSING),
        f"{s.recovery_tokens:,}" if isinstance(s.recovery_tokens, int) else fmt.MISSING,
        fmt.seconds(s.recovery_seconds),
    ]


def search_section(study: Study) -> list[Block]:
    search = study.search
    if not search:
        return []
    trained, ladder, saved = search.get("trained"), search.get("ladder"), search.get("saved")
    text = "The loss-guided search"
    if fmt.is_number(trained) and fmt.is_number(ladder):
        text += f" trained {trained} of the {ladder} candidates on the ladder"
    if fmt.is_number(saved):
        share = f" ({saved / ladder:.0%} of the ladder)" if fmt.is_number(ladder) and ladder else ""
        text += f" and saved {saved} training run(s){share} against training the full ladder"
    blocks: list[Block] = [Heading("Loss-guided search"), Paragraph(text + ".")]
    others = [
        f"{key.replace('_', ' ')}: {_cell(key, value)}"
        for key, value in search.items()
        if key not in ("trained", "ladder", "saved")
    ]
    return blocks + ([Bullets(others)] if others else [])


def runs_section(study: Study) -> list[Block]:
    """Every run, smallest first, failed and pending ones included."""
    ordered = sorted(
        study.runs,
        key=lambda run: (run.params if fmt.is_number(run.params) else float("inf"), -(run.acc or 0)),
    )
    judged = scored_teachers(study)
    teachers = [t.name for t in judged]
    headers = [f"p vs {t.name}" + ("" if is_measured(t) else f" ({fmt.REPORTED})") for t in judged]
    rows = [
        [
            run.label,
            group_of(run),
            fmt.params(run.params),
            fmt.pct(run.acc),
            fmt.pct_interval(run.ci95),
            fmt.memory_mb(run.peak_memory_mb),
            fmt.milliseconds(run.latency_ms_p50),
            fmt.decimal(run.bits_per_byte),
            fmt.seconds(run.train_seconds),
            _count(run.truncated),
            *[fmt.p_value(((run.vs_teachers or {}).get(name) or {}).get("p_value")) for name in teachers],
            str(run.status),
        ]
        for run in ordered
    ]
    width = 11 + len(teachers)
    rows.append(_baseline_row(study, width, acc_column=3))
    return [
        Heading("Every run"),
        Table(
            [
                "run",
                "group",
                "parameters",
                "accuracy",
                "95% CI",
                "peak memory",
                "latency p50",
                "bits/byte",
                "training",
                "inputs cut",
                *headers,
                "status",
            ],
            rows,
            align=["l", "l", "r", "r", "r", "r", "r", "r", "r", "r", *["r"] * len(teachers), "l"],
            caption="p vs a teacher: the share of paired bootstrap resamples of the test questions in "
            "which the run does not beat that teacher (against a reported teacher: its "
            "number). Inputs cut: test inputs whose evidence was cut to fit the input "
            "budget, the question kept. Also in runs.csv and runs.json next to this report.",
        ),
    ]


def _count(value) -> str:
    return str(value) if isinstance(value, int) else fmt.MISSING


def _accuracy(run: RunResult) -> float:
    return run.acc if fmt.is_number(run.acc) else float("-inf")


def reproducibility_section(study: Study) -> list[Block]:
    facts = [
        f"{name}: {getattr(study, key)}"
        for name, key in (
            ("experiment", "experiment"),
            ("task", "task"),
            ("split", "split"),
            ("test questions", "n_test"),
            ("created", "created"),
            ("config hash", "config_hash"),
            ("data hash", "data_hash"),
        )
        if getattr(study, key)
    ]
    blocks: list[Block] = [Heading("Reproducibility"), Bullets(facts or ["no identifying fields in this study"])]
    versions = study.versions or {}
    if versions:
        blocks.append(Table(["package", "version"], [[name, str(version)] for name, version in versions.items()]))
    return blocks
