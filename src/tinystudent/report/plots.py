"""The report's plots, drawn with matplotlib's Agg canvas and returned as PNG bytes.

No pyplot: each plot owns its `Figure`, so rendering holds no global state, works without a
display and frees its memory when done. Every plot marks accuracy as a percentage, draws 95%
intervals as error bars, each teacher as a horizontal line (dashed when its accuracy was only
reported) and the majority baseline as a dotted grey line.
"""

from __future__ import annotations

import io
import math
from typing import Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter
from matplotlib.transforms import blended_transform_factory

from tinystudent.report import format as fmt
from tinystudent.report.study import COLLABORATION, TAUGHT, UNTRAINED, cost, group_of, is_measured, pareto_frontier
from tinystudent.results import RunResult, Study

TEACHER_COLOURS = ["#b2182b", "#2166ac", "#5aae61", "#9970ab", "#e08214"]
GROUP_MARKERS = {TAUGHT: "o", COLLABORATION: "D", UNTRAINED: "X"}
DPI = 100


def value_of(run: RunResult, key: str) -> float:
    """A run's number under `key` (acc, params, peak_memory_mb, bits_per_byte); NaN when it has
    none (the plots draw only runs that have it)."""
    value = getattr(run, key)
    return float(value) if fmt.is_number(value) else math.nan


def objective_of(run: RunResult) -> str:
    """The run's objective as the plots name it ("?" when it has none)."""
    return "?" if run.objective is None else str(run.objective)


def objective_colours(runs: list[RunResult]) -> dict[str, str]:
    """One colour per objective, in the order objectives first appear (stable across plots)."""
    from matplotlib import colormaps

    objectives = list(dict.fromkeys(objective_of(run) for run in runs))
    palette = colormaps["tab10" if len(objectives) <= 10 else "tab20"].colors  # type: ignore[attr-defined]
    return {objective: palette[i % len(palette)] for i, objective in enumerate(objectives)}


def accuracy_vs_cost(
    study: Study, runs: list[RunResult], cost_key: str, xlabel: str, frontier: bool = False
) -> Optional[bytes]:
    """Accuracy of every finished run against one cost (params or peak_memory_mb).

    Args:
        study: the study (teachers and majority baseline are drawn as lines).
        runs: finished runs; those without a number for `cost_key` are left out.
        cost_key: "params" or "peak_memory_mb".
        xlabel: the x axis title.
        frontier: also draw the Pareto frontier (cheapest run for each level of accuracy).
    Returns:
        PNG bytes, or None when no run has that cost.
    """
    shown = [run for run in runs if fmt.is_number(cost(run, cost_key)) and cost(run, cost_key) > 0]
    if not shown:
        return None
    figure = Figure(figsize=(9.5, 5.2))
    ax = figure.add_subplot()
    colours = objective_colours(runs)
    positions = dodged_positions(shown, cost_key)
    _scatter_runs(ax, shown, positions, colours)
    if frontier:
        _draw_frontier(ax, pareto_frontier(shown, cost_key), positions)
    _reference_lines(ax, study)
    costs = [value_of(run, cost_key) for run in shown]
    formatter = fmt.params if cost_key == "params" else fmt.memory_mb
    if max(costs) / min(costs) > 8 or cost_key == "params":
        _log_axis(ax, costs, formatter)
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: formatter(value)))
    ax.set_xlabel(xlabel)
    _finish_accuracy_axis(ax)
    ax.legend(
        handles=_legend_handles(shown, colours, study, frontier),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    return _png(figure)


def accuracy_vs_bpb_and_params(runs: list[RunResult], correlations: dict) -> Optional[bytes]:
    """Two panels side by side: accuracy against bits per byte and against parameters.

    Only runs with a bits-per-byte measurement appear in either panel, so the two correlations
    are computed over the same runs.
    """
    shown = [run for run in runs if fmt.is_number(run.bits_per_byte)]
    if len(shown) < 2:
        return None
    figure = Figure(figsize=(10.5, 4.4))
    left, right = figure.subplots(1, 2, sharey=True)
    colours = objective_colours(runs)
    _scatter_runs(left, shown, dodged_positions(shown, "bits_per_byte", step=0.003), colours)
    left.set_xlabel("bits per byte before training (lower is better)")
    r = correlations.get("acc_vs_bpb_pearson")
    left.set_title(f"accuracy vs bits per byte (Pearson r = {fmt.decimal(r, 2)})", fontsize=10)
    with_params = [run for run in shown if fmt.is_number(run.params) and run.params > 0]
    if with_params:
        _scatter_runs(right, with_params, dodged_positions(with_params, "params"), colours)
        _log_axis(right, [value_of(run, "params") for run in with_params], fmt.params)
    right.set_xlabel("parameters (log scale)")
    r = correlations.get("acc_vs_log_params_pearson")
    right.set_title(f"accuracy vs log parameters (Pearson r = {fmt.decimal(r, 2)})", fontsize=10)
    for ax in (left, right):
        _finish_accuracy_axis(ax)
    right.set_ylabel("")
    right.legend(
        handles=_legend_handles(shown, colours, None, False),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    return _png(figure)


def dodged_positions(runs: list[RunResult], key: str, step: float = 0.012) -> dict[int, float]:
    """x of each run (by id), runs sharing one x spread `step` decades apart so none hides another.

    A student trained six ways has six runs at the same size; without the spread their points and
    interval bars would be drawn on top of each other.
    """
    by_value: dict[float, list[RunResult]] = {}
    for run in runs:
        by_value.setdefault(value_of(run, key), []).append(run)
    positions = {}
    for value, same in by_value.items():
        same.sort(key=lambda run: (str(run.group), str(run.objective), str(run.method)))
        for index, run in enumerate(same):
            positions[id(run)] = value * 10 ** ((index - (len(same) - 1) / 2) * step)
    return positions


def _scatter_runs(ax, runs: list[RunResult], positions: dict[int, float], colours: dict[str, str]) -> None:
    """One point per run: colour = objective, shape = group, hollow = LoRA; 95% interval as a bar."""
    for run in runs:
        x, y = positions[id(run)], value_of(run, "acc")
        colour = colours.get(objective_of(run), "#444444")
        marker = GROUP_MARKERS.get(group_of(run), "o")
        hollow = run.method == "lora"
        interval = run.ci95
        if interval is not None and fmt.points_interval(interval) != fmt.MISSING:
            below, above = max(0.0, y - interval[0]), max(0.0, interval[1] - y)
            ax.errorbar(
                [x],
                [y],
                yerr=[[below], [above]],
                fmt="none",
                ecolor=colour,
                alpha=0.55,
                elinewidth=1.2,
                capsize=3,
                zorder=2,
            )
        ax.scatter(
            [x],
            [y],
            s=46,
            marker=marker,
            zorder=3,
            linewidths=1.5,
            facecolors="white" if hollow else colour,
            edgecolors=colour,
        )


def _draw_frontier(ax, frontier: list[RunResult], positions: dict[int, float]) -> None:
    """The Pareto frontier as a thick staircase, with each run on it ringed and named."""
    if not frontier:
        return
    xs = [positions[id(run)] for run in frontier]
    ys = [value_of(run, "acc") for run in frontier]
    ax.plot(xs, ys, drawstyle="steps-post", color="#f4a300", linewidth=5, alpha=0.35, zorder=1)
    ax.scatter(xs, ys, s=190, facecolors="none", edgecolors="#f4a300", linewidths=2.2, zorder=4)
    for run, x, y in zip(frontier, xs, ys):
        ax.annotate(
            _short_label(run),
            (x, y),
            textcoords="offset points",
            xytext=(7, -11),
            fontsize=7,
            color="#7a5200",
            zorder=5,
        )


def _short_label(run: RunResult) -> str:
    label = run.label
    return label if len(label) <= 50 else label[:48] + "..."


def _reference_lines(ax, study: Study) -> None:
    """Teachers (solid when measured, dashed when reported) and the majority baseline, labelled at the right."""
    on_right = blended_transform_factory(ax.transAxes, ax.transData)
    for index, teacher in enumerate(study.teachers):
        if not fmt.is_number(teacher.acc):
            continue  # it only gave rationales: no accuracy to draw
        colour = TEACHER_COLOURS[index % len(TEACHER_COLOURS)]
        measured = is_measured(teacher)
        ax.axhline(teacher.acc, color=colour, linestyle="-" if measured else "--", linewidth=1.6, zorder=1)
        note = "" if measured else " (reported)"
        ax.text(
            0.995,
            teacher.acc,
            f"{teacher.name} {fmt.pct(teacher.acc)}{note}",
            transform=on_right,
            ha="right",
            va="bottom",
            fontsize=7.5,
            color=colour,
        )
    baseline = study.majority_baseline
    if fmt.is_number(baseline):
        ax.axhline(baseline, color="#777777", linestyle=":", linewidth=1.4, zorder=1)
        ax.text(
            0.005,
            baseline,
            f"majority baseline {fmt.pct(baseline)}",
            transform=on_right,
            ha="left",
            va="bottom",
            fontsize=7.5,
            color="#555555",
        )


def _legend_handles(runs: list[RunResult], colours: dict[str, str], study: Optional[Study], frontier: bool) -> list:
    present = list(dict.fromkeys(objective_of(run) for run in runs))
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[o], label=o) for o in present]
    groups = list(dict.fromkeys(group_of(run) for run in runs))
    handles += [
        Line2D([], [], marker=GROUP_MARKERS.get(g, "o"), linestyle="", color="#444444", label=f"{g} run")
        for g in groups
    ]
    if any(run.method == "lora" for run in runs):
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markerfacecolor="white",
                markeredgecolor="#444444",
                color="#444444",
                label="hollow: LoRA",
            )
        )
    if study is not None:
        if any(is_measured(t) for t in study.teachers):
            handles.append(Line2D([], [], color="#444444", label="teacher (measured)"))
        if any(not is_measured(t) for t in study.teachers):
            handles.append(Line2D([], [], color="#444444", linestyle="--", label="teacher (reported, not measured)"))
        if fmt.is_number(study.majority_baseline):
            handles.append(Line2D([], [], color="#777777", linestyle=":", label="majority baseline"))
    if frontier:
        handles.append(Line2D([], [], color="#f4a300", linewidth=5, alpha=0.5, label="Pareto frontier"))
    handles.append(Line2D([], [], color="#444444", marker="|", linestyle="", markersize=10, label="95% interval"))
    return handles


def _finish_accuracy_axis(ax) -> None:
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="major", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _log_axis(ax, values: list[float], formatter) -> None:
    """Log scale with ticks at 1, 2 and 5 of each decade (students often span less than one) and
    room either side, so end points and their labels are not cut off."""
    ax.set_xscale("log")
    low, high = math.log10(min(values)), math.log10(max(values))
    pad = max(0.2, 0.12 * (high - low))
    ax.set_xlim(10 ** (low - pad), 10 ** (high + pad))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: formatter(value)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()
