"""CPU threads per process, set deliberately.

torch starts as many intra-op threads as there are CPUs, and its OpenMP threads spin while they
wait. Two such processes on one machine take turns on every core and can run many times slower
than one alone (`bench/bench_threads.py`). So each process we start gets a share: the user's
$OMP_NUM_THREADS when set, else the CPUs this process may run on divided among
$TINYSTUDENT_CONCURRENT processes (1: a single process takes them all).
"""

from __future__ import annotations

import os
import sys

from tinystudent.log import warn


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and SLURM set)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_share(concurrent: int = 1) -> int:
    """Threads for one of `concurrent` processes sharing this machine's CPUs."""
    return max(1, usable_cpus() // max(1, concurrent))


def configure_threads() -> int:
    """Set OMP_NUM_THREADS (read by torch when it loads, and inherited by every child process)
    unless the user set it; returns the thread count in force."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    concurrent = os.environ.get("TINYSTUDENT_CONCURRENT", "1").strip() or "1"
    if not concurrent.isdigit() or int(concurrent) < 1:
        warn(f"TINYSTUDENT_CONCURRENT must be a whole number of processes, got {concurrent!r}; using 1")
        concurrent = "1"
    threads = thread_share(int(concurrent))
    use_threads(threads)
    return threads


def use_threads(threads: int) -> None:
    """Run torch (loaded already or not) and every child process with `threads` CPU threads."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # loaded already: tell it too
        import torch

        torch.set_num_threads(threads)


_share = None  # a shared integer (multiprocessing.Value) another process sets: our threads now


def follow_share(share) -> None:
    """From now on, take this process's thread count from `share` (a `multiprocessing.Value`
    the process that started us sets, as other work on the machine starts and ends); long loops
    call `keep_share` to apply it."""
    global _share
    _share = share


def keep_share() -> None:
    """Use the thread count our share says, when it changed (cheap enough for every training step)."""
    if _share is None or "torch" not in sys.modules:
        return
    wanted = int(_share.value)
    import torch

    if wanted > 0 and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
