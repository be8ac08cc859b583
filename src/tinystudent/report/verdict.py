"""The verdict section: one plain sentence per teacher and measure of size, then the table.

Each verdict entry comes from the experiment runner's paired bootstrap (student minus teacher on
the same test questions). This module only words it; it never re-judges who won.
"""

from __future__ import annotations

from tinystudent.report import format as fmt
from tinystudent.report.blocks import Block, Bullets, Heading, Paragraph, Table
from tinystudent.report.markdown import render_markdown
from tinystudent.report.study import is_measured, teachers_by_name

MEASURES = {"params": "parameters", "peak_memory_mb": "peak memory"}


def verdict_section(study: dict) -> list[Block]:
    """Heading, the sentences grouped by teacher (best teacher first), a note on the test, the table."""
    entries = study.get("verdict") or []
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
        teacher = teachers.get(teacher_name, {})
        best = any(entry.get("best_teacher") for entry in own)
        blocks.append(Heading(_teacher_title(own[0], teacher, best), 3))
        blocks.append(
            Bullets(
                [
                    verdict_sentence(entry, teacher, study.get("majority_baseline"), _majority_answer(study))
                    for entry in own
                ],
                callout=True,
            )
        )
    n_test = study.get("n_test")
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


def _majority_answer(study: dict) -> str | None:
    majority = (study.get("baselines") or {}).get("majority") or {}
    return majority.get("answer")


def baseline_section(study: dict) -> list[Block]:
    """The rows a reader compares a winner with: the majority baseline and the best student taught
    by gold answers alone, then each recipe's seeds."""
    baselines = study.get("baselines")
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
    seeded = [r for r in study.get("recipes") or [] if len(r.get("seeds") or []) > 1]
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


def verdict_text(study: dict) -> str:
    """The verdict section as plain text (the same words as the report), for a terminal."""

    return render_markdown(verdict_section(study))


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


def _entry_measured(entry: dict, teacher: dict) -> bool:
    if entry.get("teacher_measured") is not None:
        return bool(entry["teacher_measured"])
    return is_measured(teacher) if teacher else True


def _teacher_title(entry: dict, teacher: dict, best: bool) -> str:
    """ "Against X, the best teacher (acc 73.8%, reported, not measured; source: ...)"."""
    acc = entry.get("teacher_acc", teacher.get("acc"))
    details = [f"acc {fmt.pct(acc)}"]
    if not _entry_measured(entry, teacher):
        details.append(fmt.REPORTED)
    details = [", ".join(details)]
    if teacher.get("source"):
        details.append(f"source: {teacher['source']}")
    return f"Against {entry['teacher']}{', the best teacher' if best else ''} ({'; '.join(details)})"


def verdict_sentence(entry: dict, teacher: dict, baseline: float | None = None, answer: str | None = None) -> str:
    """The verdict for one teacher and one measure of size, as a sentence.

    With a winner: "By parameters, the smallest student that beats X (acc 52.0%) is Y (acc 55.0%,
    +3.0 points, 95% CI [-1.0, +7.0], p = 0.040), with 45.0M parameters against the teacher's 134.5M."
    Without: "By parameters, no student beats X (acc 52.0%); the closest is Y (acc 49.0%, ...)."
    A winner also beats the majority baseline (always `answer`), by the difference said after its
    own; a teacher below that baseline is flagged. A winner of an older study no more accurate than
    the majority `baseline` is said to be so.
    """
    by = entry.get("by", "params")
    measure = MEASURES.get(by, by)
    acc = entry.get("teacher_acc", teacher.get("acc"))
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
                f"({_size(loser, by)}, {loser_evidence})."
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
            f"{_cost_clause(entry, teacher, by)}.{_versus_majority(entry.get('vs_majority'))}{trivial}{boundary}"
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
            f" The largest student tried, {loser.get('label', '?')} ({_size(loser, by)}), does not beat it either."
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


def _size(record: dict, by: str) -> str:
    if by == "peak_memory_mb":
        return f"{fmt.memory_mb(record.get('peak_memory_mb'))} peak memory"
    return f"{fmt.params(record.get('params'))} parameters"


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


def _cost_clause(entry: dict, teacher: dict, by: str) -> str:
    if by == "peak_memory_mb":
        mine, theirs, show, unit = (
            entry.get("winner_peak_memory_mb"),
            teacher.get("peak_memory_mb"),
            fmt.memory_mb,
            "peak memory",
        )
    else:
        mine, theirs, show, unit = entry.get("winner_params"), teacher.get("params"), fmt.params, "parameters"
    if not fmt.is_number(mine):
        return ""
    clause = f", with {show(mine)} {unit}"
    if fmt.is_number(theirs) and mine > 0:
        clause += f" against the teacher's {show(theirs)} ({theirs / mine:.1f}x smaller)"
    return clause


def verdict_table(entries: list[dict], teachers: dict[str, dict]) -> Table:
    """One row per teacher and measure: the winner, or "none" with the closest run."""
    rows = []
    for entry in entries:
        teacher = teachers.get(entry["teacher"], {})
        measured = _entry_measured(entry, teacher)
        name = entry["teacher"] + ("" if measured else f" ({fmt.REPORTED})")
        winner = entry.get("smallest_winner")
        closest = entry.get("closest") or {}
        source = entry if winner else closest
        loser = entry.get("largest_loser") or {}
        rows.append(
            [
                name + (" [best]" if entry.get("best_teacher") else ""),
                fmt.pct(entry.get("teacher_acc", teacher.get("acc"))),
                MEASURES.get(entry.get("by", "params"), str(entry.get("by"))),
                winner or f"none (closest: {closest.get('label', fmt.MISSING)})",
                fmt.pct(entry.get("winner_acc") if winner else closest.get("acc")),
                fmt.points(source.get("diff")),
                fmt.points_interval(source.get("diff_ci95")),
                fmt.p_value(source.get("p_value")),
                f"{loser['label']} ({fmt.pct(loser.get('acc'))})" if loser else fmt.MISSING,
            ]
        )
    return Table(
        [
            "teacher",
            "teacher acc",
            "judged by",
            "smallest student that beats it",
            "student acc",
            "difference (points)",
            "95% CI (points)",
            "p",
            "largest student below that does not",
        ],
        rows,
        align=["l", "r", "l", "l", "r", "r", "r", "r", "l"],
    )
