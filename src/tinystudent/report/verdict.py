"""The verdict section: one plain sentence per teacher, then the table.

Each verdict entry comes from the experiment runner's paired bootstrap (student minus teacher on
the same test questions), one per teacher and measure of size (parameters, peak memory). Entries
that name the same student with the same numbers on every measure are one verdict, said once
("By parameters and peak memory, ..."); the table gives the student's size on each measure as its
own column. This module only words the verdict; it never re-judges who won.
"""

from __future__ import annotations

from tinystudent.report import format as fmt
from tinystudent.report.blocks import Block, Bullets, Heading, Paragraph, Table
from tinystudent.report.markdown import render_markdown
from tinystudent.report.study import is_measured, teachers_by_name
from tinystudent.results import Study, TeacherResult

MEASURES = {"params": "parameters", "peak_memory_mb": "peak memory"}


def verdict_section(study: Study) -> list[Block]:
    """Heading, the sentences grouped by teacher (best teacher first), a note on the test, the table."""
    entries = study.verdict
    blocks: list[Block] = [Heading("Verdict")]
    if not entries:
        blocks.append(
            Paragraph(
                "This study has no verdict yet: no finished student run has been compared "
                "with a teacher. Run the experiment to the end and render the report again."
            )
        )
        return blocks
    teachers = teachers_by_name(study)
    for teacher_name in _teacher_order(entries):
        own = [entry for entry in entries if entry["teacher"] == teacher_name]
        teacher = teachers.get(teacher_name)
        best = any(entry.get("best_teacher") for entry in own)
        blocks.append(Heading(_teacher_title(own[0], teacher, best), 3))
        blocks.append(
            Bullets(
                [
                    shared_verdict_sentence(same, teacher, study.majority_baseline, _majority_answer(study))
                    for same in same_verdicts(own)
                ],
                callout=True,
            )
        )
    n_test = study.n_test
    questions = f"the same {n_test} test questions" if fmt.is_number(n_test) else "the same test questions"
    blocks.append(
        Paragraph(
            f"Differences are student minus teacher in percentage points on {questions}, with a 95% "
            "interval from a paired bootstrap; p is the share of resamples in which the student does not "
            "beat the teacher. A student wins only when it beats both the teacher and the majority baseline "
            "(always giving the most common answer) with p below 0.05. A student trained with several seeds "
            "is judged by its mean over them, and each resample also draws its seeds, so the interval holds "
            "seed variance too. A teacher whose accuracy was only reported elsewhere has no answers to pair "
            "with, so comparisons with it are against its reported number."
        )
    )
    blocks.append(verdict_table(entries, teachers))
    blocks.extend(baseline_section(study))
    return blocks


def _majority_answer(study: Study) -> str | None:
    majority = (study.baselines or {}).get("majority") or {}
    return majority.get("answer")


def baseline_section(study: Study) -> list[Block]:
    """The rows a reader compares a winner with: the majority baseline and the best student taught
    by gold answers alone, then each recipe's seeds."""
    baselines = study.baselines
    if not baselines:
        return []
    rows = []
    majority = baselines.get("majority") or {}
    if fmt.is_number(majority.get("acc")):
        rows.append([f"majority baseline (always {majority.get('answer')!r})", fmt.pct(majority["acc"]), "", ""])
    answer_only = baselines.get("answer_only")
    if answer_only:
        rows.append(
            [
                f"best student on gold answers alone: {answer_only['label']}",
                fmt.pct(answer_only.get("acc")),
                fmt.pct_interval(answer_only.get("ci95")),
                fmt.params(answer_only.get("params")),
            ]
        )
    blocks: list[Block] = [Heading("Baselines", 3)]
    blocks.append(Table(["baseline", "accuracy", "95% CI", "parameters"], rows, align=["l", "r", "r", "r"]))
    seeded = [r for r in study.recipes if len(r.get("seeds") or []) > 1]
    if seeded:
        blocks.append(Heading("Seeds", 3))
        blocks.append(
            Table(
                ["recipe", "each seed", "mean", "seed std (points)", "95% CI (questions and seeds)"],
                [
                    [
                        r["label"],
                        ", ".join(f"{s['seed']}: {fmt.pct(s['acc'])}" for s in r["seeds"]),
                        fmt.pct(r.get("acc")),
                        fmt.decimal(100 * r["seed_std"], 1) if fmt.is_number(r.get("seed_std")) else fmt.MISSING,
                        fmt.pct_interval(r.get("ci95")),
                    ]
                    for r in seeded
                ],
                align=["l", "l", "r", "r", "r"],
            )
        )
    return blocks


def verdict_text(study: Study) -> str:
    """The verdict section as plain text (the same words as the report), for a terminal."""

    return render_markdown(verdict_section(study))


def same_verdicts(entries: list[dict]) -> list[list[dict]]:
    """The entries gathered into verdicts, in the order they come: entries for one teacher that
    differ only in the measure of size (`by`) are one verdict.

    The runner judges each teacher once per measure with the same bootstrap, so when one student is
    the smallest winner (or the closest) on every measure, with the same student below it, the
    entries agree key for key apart from `by`. Entries that differ in anything else (another
    winner by peak memory, say) stay apart: they say different things.
    """
    verdicts: list[list[dict]] = []
    for entry in entries:
        said = _said(entry)
        for same in verdicts:
            if _said(same[0]) == said and _by(entry) not in {_by(other) for other in same}:
                same.append(entry)
                break
        else:
            verdicts.append([entry])
    return verdicts


def _said(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key != "by"}


def _by(entry: dict) -> str:
    return entry.get("by", "params")


def _measures(entries: list[dict]) -> str:
    """ "parameters", or "parameters and peak memory"."""
    return " and ".join(MEASURES.get(_by(entry), _by(entry)) for entry in entries)


def _teacher_order(entries: list[dict]) -> list[str]:
    """Best teacher first, then the others in the order the study lists them."""
    names = list(dict.fromkeys(entry["teacher"] for entry in entries))
    best = [name for name in names if any(e.get("best_teacher") for e in entries if e["teacher"] == name)]
    return best + [name for name in names if name not in best]


def teacher_mention(name: str, acc, measured: bool, below: str = "") -> str:
    """ "X (acc 52.0%)", "X (acc 73.8%, reported, not measured)", or with `below` the majority
    baseline: "X (acc 65.8%, below always-'yes' at 66.7%; beating it shows little)"."""
    marker = "" if measured else f", {fmt.REPORTED}"
    return f"{name} (acc {fmt.pct(acc)}{marker}{below})"


def _below_majority(entry: dict, answer: str | None) -> str:
    """The flag of a teacher no better than always giving the most common answer."""
    if not entry.get("teacher_below_majority"):
        return ""
    always = f"always-'{answer}'" if answer else "the majority baseline"
    return f", below {always} at {fmt.pct(entry.get('majority_baseline'))}; beating it shows little"


def _entry_measured(entry: dict, teacher: TeacherResult | None) -> bool:
    if entry.get("teacher_measured") is not None:
        return bool(entry["teacher_measured"])
    return is_measured(teacher) if teacher else True


def _teacher_acc(entry: dict, teacher: TeacherResult | None):
    """The teacher's accuracy as the entry was judged against (the teacher's own when it has none)."""
    return entry["teacher_acc"] if "teacher_acc" in entry else teacher.acc if teacher else None


def _teacher_title(entry: dict, teacher: TeacherResult | None, best: bool) -> str:
    """ "Against X, the best teacher (acc 73.8%, reported, not measured; source: ...)"."""
    details = [f"acc {fmt.pct(_teacher_acc(entry, teacher))}"]
    if not _entry_measured(entry, teacher):
        details.append(fmt.REPORTED)
    details = [", ".join(details)]
    if teacher is not None and teacher.source:
        details.append(f"source: {teacher.source}")
    return f"Against {entry['teacher']}{', the best teacher' if best else ''} ({'; '.join(details)})"


def verdict_sentence(
    entry: dict, teacher: TeacherResult | None = None, baseline: float | None = None, answer: str | None = None
) -> str:
    """The verdict for one teacher and one measure of size, as a sentence.

    With a winner: "By parameters, the smallest student that beats X (acc 52.0%) is Y (acc 55.0%,
    +3.0 points, 95% CI [-1.0, +7.0], p = 0.040), with 45.0M parameters against the teacher's 134.5M."
    Without: "By parameters, no student beats X (acc 52.0%); the closest is Y (acc 49.0%, ...)."
    A winner also beats the majority baseline (always `answer`), by the difference said after its
    own; a teacher below that baseline is flagged. A winner of an older study no more accurate than
    the majority `baseline` is said to be so.
    """
    return shared_verdict_sentence([entry], teacher, baseline, answer)


def shared_verdict_sentence(
    entries: list[dict], teacher: TeacherResult | None = None, baseline: float | None = None, answer: str | None = None
) -> str:
    """The sentence of one verdict (`same_verdicts`): entries for one teacher that say the same on
    each of their measures of size. It is `verdict_sentence`'s with every measure named ("By
    parameters and peak memory, ...") and the sizes given on each, "with 76.5M parameters against
    the teacher's 134.5M (1.8x smaller) and 880 MB peak memory against the teacher's 1.9 GB (2.2x
    smaller)"."""
    entry = entries[0]
    axes = [_by(e) for e in entries]
    measure = _measures(entries)
    acc = _teacher_acc(entry, teacher)
    who = teacher_mention(entry["teacher"], acc, _entry_measured(entry, teacher), _below_majority(entry, answer))
    winner = entry.get("smallest_winner")
    loser = entry.get("largest_loser")
    if winner:
        evidence = _evidence(
            entry.get("winner_acc"),
            entry.get("diff"),
            entry.get("diff_ci95"),
            entry.get("p_value"),
            entry.get("subset"),
        )
        boundary = ""
        if loser:
            loser_evidence = _evidence(
                loser.get("acc"), loser.get("diff"), loser.get("diff_ci95"), loser.get("p_value"), loser.get("subset")
            )
            boundary = (
                f" Below it, the largest student that does not beat it is {loser.get('label', '?')} "
                f"({_size(loser, axes)}, {loser_evidence})."
            )
        trivial = ""
        if (
            fmt.is_number(baseline)
            and fmt.is_number(entry.get("winner_acc"))
            and round(entry["winner_acc"], 4) <= round(baseline, 4)
        ):  # the study rounds to 4 places
            trivial = (
                f" It does no better than always giving the most common answer (the majority baseline, "
                f"{fmt.pct(baseline)}): the teacher is beaten, the task is not yet learnt."
            )
        return (
            f"By {measure}, the smallest student that beats {who} is {winner} ({evidence})"
            f"{_cost_clause(entry, teacher, axes)}.{_versus_majority(entry.get('vs_majority'))}{trivial}{boundary}"
        )
    closest = entry.get("closest")
    if not closest:
        return f"By {measure}, no student beats {who}, and no finished student run could be compared with it."
    evidence = _evidence(
        closest.get("acc"), closest.get("diff"), closest.get("diff_ci95"), closest.get("p_value"), closest.get("subset")
    )
    largest = ""
    if loser and loser.get("label") != closest.get("label"):
        largest = (
            f" The largest student tried, {loser.get('label', '?')} ({_size(loser, axes)}), does not beat it either."
        )
    majority = closest.get("vs_majority")
    short = ""
    if majority and fmt.is_number(closest.get("p_value")) and closest["p_value"] < entry.get("alpha", 0.05):
        short = (
            f" It is ahead of the teacher but not of the majority baseline ({fmt.points(majority.get('diff'))} "
            f"points, {fmt.p_clause(majority.get('p_value'))}), so it does not count as a win."
        )
    return (
        f"By {measure}, no student beats {who}; the closest is {closest.get('label', '?')} ({evidence})."
        f"{short}{largest}"
    )


def _versus_majority(result: dict | None) -> str:
    """ " It also beats the majority baseline: +12.2 points, 95% CI [...], p = 0.004." """
    if not result:
        return ""
    interval = fmt.points_interval(result.get("ci95"))
    return (
        f" It also beats the majority baseline: {fmt.points(result.get('diff'))} points, 95% CI {interval}, "
        f"{fmt.p_clause(result.get('p_value'))}."
    )


def _size(record: dict, axes: list[str]) -> str:
    """ "45.0M parameters", or on two measures "45.0M parameters, 560 MB peak memory"."""
    return ", ".join(
        f"{fmt.memory_mb(record.get('peak_memory_mb'))} peak memory"
        if by == "peak_memory_mb"
        else f"{fmt.params(record.get('params'))} parameters"
        for by in axes
    )


def _evidence(acc, diff, interval, p, subset: dict | None = None) -> str:
    parts = [f"acc {fmt.pct(acc)}"]
    if subset:
        parts = [
            f"acc {fmt.pct(acc)} on the {subset['n']} of {subset['of']} test questions it answered, "
            f"where the teacher has {fmt.pct(subset['teacher_acc'])}"
        ]
    if fmt.is_number(diff):
        parts.append(f"{fmt.points(diff)} points")
    if fmt.points_interval(interval) != fmt.MISSING:
        parts.append(f"95% CI {fmt.points_interval(interval)}")
    else:
        parts.append("no paired interval")
    if fmt.is_number(p):
        parts.append(fmt.p_clause(p))
    return ", ".join(parts)


def _costs(record: dict, teacher: TeacherResult | None, by: str, winner: bool):
    """The student's cost in `by`, the teacher's, how to show them and the unit's name. `record`
    is a winning entry (`winner_params`, `winner_peak_memory_mb`) or a described run (`params`)."""
    if by == "peak_memory_mb":
        mine = record.get("winner_peak_memory_mb" if winner else "peak_memory_mb")
        return mine, teacher.peak_memory_mb if teacher else None, fmt.memory_mb, "peak memory"
    mine = record.get("winner_params" if winner else "params")
    return mine, teacher.params if teacher else None, fmt.params, "parameters"


def _cost_clause(entry: dict, teacher: TeacherResult | None, axes: list[str]) -> str:
    clauses = []
    for by in axes:
        mine, theirs, show, unit = _costs(entry, teacher, by, winner=True)
        if not fmt.is_number(mine):
            continue
        clause = f"{show(mine)} {unit}"
        if fmt.is_number(theirs) and mine > 0:
            clause += f" against the teacher's {show(theirs)} ({theirs / mine:.1f}x smaller)"
        clauses.append(clause)
    return f", with {' and '.join(clauses)}" if clauses else ""


def _cost_cell(record: dict, teacher: TeacherResult | None, by: str, winner: bool) -> str:
    """The student's size in one measure and how many times smaller than the teacher it is."""
    mine, theirs, show, _ = _costs(record, teacher, by, winner)
    if not fmt.is_number(mine):
        return fmt.MISSING
    if fmt.is_number(theirs) and mine > 0:
        return f"{show(mine)} ({theirs / mine:.1f}x smaller)"
    return show(mine)


def verdict_table(entries: list[dict], teachers: dict[str, TeacherResult]) -> Table:
    """One row per verdict (`same_verdicts`): the winner, or "none" with the closest run, and its
    size in each measure as a column. A "judged by" column says which measures a row holds when a
    teacher's verdict differs between measures."""
    measures = list(dict.fromkeys(_by(entry) for entry in entries))
    verdicts = same_verdicts(entries)
    split = any({_by(entry) for entry in same} != set(measures) for same in verdicts)
    rows = []
    for same in verdicts:
        entry = same[0]
        teacher = teachers.get(entry["teacher"])
        name = entry["teacher"] + ("" if _entry_measured(entry, teacher) else f" ({fmt.REPORTED})")
        winner = entry.get("smallest_winner")
        closest = entry.get("closest") or {}
        source = entry if winner else closest
        loser = entry.get("largest_loser") or {}
        rows.append(
            [
                name + (" [best]" if entry.get("best_teacher") else ""),
                fmt.pct(_teacher_acc(entry, teacher)),
                *([_measures(same)] if split else []),
                winner or f"none (closest: {closest.get('label', fmt.MISSING)})",
                fmt.pct(entry.get("winner_acc") if winner else closest.get("acc")),
                fmt.points(source.get("diff")),
                fmt.points_interval(source.get("diff_ci95")),
                fmt.p_value(source.get("p_value")),
                *[_cost_cell(source, teacher, by, winner=bool(winner)) for by in measures],
                f"{loser['label']} ({fmt.pct(loser.get('acc'))})" if loser else fmt.MISSING,
            ]
        )
    return Table(
        [
            "teacher",
            "teacher acc",
            *(["judged by"] if split else []),
            "smallest student that beats it",
            "student acc",
            "difference (points)",
            "95% CI (points)",
            "p",
            *(MEASURES.get(by, by) for by in measures),
            "largest student below that does not",
        ],
        rows,
        align=["l", "r", *(["l"] if split else []), "l", "r", "r", "r", "r", *["r"] * len(measures), "l"],
        caption="Sizes are the student's (the winner's, or the closest run's), with how many times "
        "smaller than the teacher it is.",
    )
