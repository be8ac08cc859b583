"""The cost of a model, measured the same way for every model: parameters, disk, memory, latency.

Peak memory is the GPU allocator's peak on a GPU, and the process's peak resident set on the CPU.
On Linux the CPU peak is reset before a measurement (writing 5 to /proc/self/clear_refs), so it
belongs to this measurement and not to whatever the process did before; elsewhere it is the
process's lifetime peak, and `peak_memory_scope` says which.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tinystudent.evaluation.stats import percentile
from tinystudent.models.params import count_parameters, size_on_disk_mb


def _read_vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryMeter:
    """Peak memory over a `with` block. Read `peak_mb` and `scope` after it."""

    device: torch.device
    peak_mb: float = 0.0
    scope: str = ""

    @contextmanager
    def measure(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.scope = "gpu allocator peak"
        else:
            self.scope = "process peak RSS (reset)" if _reset_cpu_peak() else "process lifetime peak RSS"
        try:
            yield self
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            else:
                hwm = _read_vm_hwm_kb()
                if hwm is None:  # macOS reports bytes, Linux kilobytes
                    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    hwm = raw // 1024 if sys.platform == "darwin" else raw
                self.peak_mb = hwm / 1024
            self.peak_mb = round(self.peak_mb, 1)


@dataclass
class LatencyMeter:
    """Per-question latency: each batch's wall time divided by its number of questions."""

    per_question_s: list[float] = field(default_factory=list)
    total_s: float = 0.0
    questions: int = 0
    on_questions: Callable[[int], None] | None = None  # told how many questions each batch answered

    def record(self, questions: int, seconds: float) -> None:
        self.per_question_s.extend([seconds / questions] * questions)
        self.total_s += seconds
        self.questions += questions
        if self.on_questions:
            self.on_questions(questions)

    def add(self, question: int, seconds: float) -> None:
        """Extra time spent on one question already recorded (a second pass over it)."""
        self.per_question_s[question] += seconds
        self.total_s += seconds

    def summary(self) -> dict:
        ms = [s * 1000 for s in self.per_question_s]
        return {
            "latency_ms_p50": round(percentile(ms, 50), 2),
            "latency_ms_p95": round(percentile(ms, 95), 2),
            "questions_per_s": round(self.questions / self.total_s, 3) if self.total_s else 0.0,
        }


def model_cost(
    model: torch.nn.Module, path: Path | None, memory: MemoryMeter, latency: LatencyMeter, batch_size: int
) -> dict:
    """Everything the verdict may weigh a model by, in one flat dict."""
    params = count_parameters(model)
    return {
        "params": params["total"],
        "params_embedding": params["embedding"],
        "params_non_embedding": params["non_embedding"],
        "size_on_disk_mb": size_on_disk_mb(path) if path else None,
        "peak_memory_mb": memory.peak_mb,
        "peak_memory_scope": memory.scope,
        "batch_size": batch_size,
        "device": str(memory.device),
        **latency.summary(),
    }


def timed(fn, *args, **kwargs):
    """Run fn and return (result, seconds)."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started
