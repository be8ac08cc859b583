"""How numbers read in the report: one place, so Markdown, HTML and plots agree.

Accuracies are percentages with one decimal ("41.0%"), differences are percentage points with a
sign ("+3.0 points"), sizes use the units people say out loud ("45.0M", "6.74B", "1.9 GB").
A missing value is an en dash, never "None" or "nan".
"""

from __future__ import annotations

import math
from typing import Optional, TypeGuard

MISSING = "–"
REPORTED = "reported, not measured"


def is_number(value) -> TypeGuard[float]:
    """True for a finite int or float (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pct(value: Optional[float]) -> str:
    """0.41 -> "41.0%"."""
    return f"{100 * value:.1f}%" if is_number(value) else MISSING


def points(value: Optional[float]) -> str:
    """A difference of accuracies: 0.03 -> "+3.0", -0.025 -> "-2.5" (percentage points)."""
    if not is_number(value):
        return MISSING
    shown = f"{100 * value:+.1f}"
    return "+0.0" if shown == "-0.0" else shown


def pct_interval(interval) -> str:
    """[0.35, 0.48] -> "[35.0%, 48.0%]"."""
    if not _is_pair(interval):
        return MISSING
    return f"[{pct(interval[0])}, {pct(interval[1])}]"


def points_interval(interval) -> str:
    """A difference's interval in points: [-0.01, 0.07] -> "[-1.0, +7.0]"."""
    if not _is_pair(interval):
        return MISSING
    return f"[{points(interval[0])}, {points(interval[1])}]"


def p_value(value: Optional[float]) -> str:
    """0.0412 -> "0.041"; below 0.001 -> "< 0.001" (a bootstrap cannot resolve smaller)."""
    if not is_number(value):
        return MISSING
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def p_clause(value: Optional[float]) -> str:
    """The p-value as it reads inside a sentence: "p = 0.041" or "p < 0.001"."""
    shown = p_value(value)
    if shown == MISSING:
        return "p not available"
    return f"p {shown}" if shown.startswith("<") else f"p = {shown}"


def params(value) -> str:
    """134515008 -> "134.5M", 6738415616 -> "6.74B", 22700 -> "22.7K"."""
    if not is_number(value):
        return MISSING
    for unit, size, digits in (("B", 1e9, 2), ("M", 1e6, 1), ("K", 1e3, 1)):
        if abs(value) >= size:
            return f"{value / size:.{digits}f}{unit}"
    return f"{value:.0f}"


def memory_mb(value) -> str:
    """800.0 -> "800 MB", 1900.0 -> "1.9 GB"."""
    if not is_number(value):
        return MISSING
    return f"{value / 1024:.1f} GB" if value >= 1024 else f"{value:.0f} MB"


def milliseconds(value) -> str:
    """Latency per question: 40.0 -> "40 ms", 2.34 -> "2.3 ms"."""
    if not is_number(value):
        return MISSING
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def seconds(value) -> str:
    """Training time: 120.0 -> "2.0 min", 12.5 -> "12 s", 7300 -> "2.0 h"."""
    if not is_number(value):
        return MISSING
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"


def decimal(value, digits: int = 3) -> str:
    """A plain number such as bits per byte or a correlation."""
    return f"{value:.{digits}f}" if is_number(value) else MISSING


def _is_pair(interval) -> bool:
    return isinstance(interval, (list, tuple)) and len(interval) == 2 and all(map(is_number, interval))
