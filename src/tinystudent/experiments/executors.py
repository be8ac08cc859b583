"""Several units of a study at once on one machine (`tinystudent run --jobs N`).

Each unit whose inputs are ready (every unit it `needs` has run) is started in a fresh process
(multiprocessing "spawn"), up to `jobs` at a time; on a machine with several GPUs each job gets
one of them. The driver alone records units in the results database (running, done, failed) and
plans again as each one finishes; a worker writes only what its work writes today (its log, its
folder, its evaluations). A worker that dies without an answer (killed, out of memory) is
started again, up to `RETRIES` times: its unit resumes from its checkpoint. An error raised by a
unit's work stops the run, as it does with one job.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.plan import Known
from tinystudent.experiments.units import UnitSpec, die_with_parent
from tinystudent.log import warn

RETRIES = 2  # restarts of a unit whose worker died without an answer


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker is started with (it opens its own connection to the database)."""

    experiment: Experiment
    data: StudyData
    db: str
    out_dir: str
    log_dir: str
    threads: int


@dataclass
class Running:
    """A unit being computed by a worker."""

    unit: UnitSpec
    process: multiprocessing.process.BaseProcess
    answer: object  # the receiving end of the worker's pipe
    gpu: int | None
    started: float
    attempt: int = 1


@dataclass
class LocalPool:
    """Up to `jobs` units at once, each in its own spawned process."""

    setup: WorkerSetup
    jobs: int
    gpus: int = 0
    running: dict[str, Running] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return self.jobs - len(self.running)

    def start(self, unit: UnitSpec, known: Known, started: float, attempt: int = 1) -> None:
        """Start `unit` in a new worker, on a GPU no other running unit holds when there are GPUs."""
        busy = {r.gpu for r in self.running.values()}
        gpu = next((g for g in range(self.gpus) if g not in busy), None) if self.gpus else None
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(target=_worker, args=(self.setup, unit, known, gpu, os.getpid(), send))
        worker.start()
        send.close()  # the worker holds the only sending end: its exit ends recv
        self.running[unit.key] = Running(unit, worker, receive, gpu, started, attempt)

    def next_finished(self) -> tuple[Running, dict | None, str | None]:
        """Wait for a worker to finish: (its unit, the result or None, the error or None). A
        worker that died without an answer gives neither."""
        if not self.running:
            raise RuntimeError("no unit of the plan can start: each waits for a unit that has not run")
        ready = wait([r.answer for r in self.running.values()])  # type: ignore[misc]
        done = next(r for r in self.running.values() if r.answer in ready)
        try:
            tag, value = done.answer.recv()  # type: ignore[attr-defined]
        except EOFError:
            tag, value = "died", None
        done.answer.close()  # type: ignore[attr-defined]
        done.process.join()
        del self.running[done.unit.key]
        if tag == "died":
            return done, None, None
        return (done, value, None) if tag == "result" else (done, None, value)

    def stop(self) -> None:
        """End every running worker (their units resume from their checkpoints next time)."""
        for running in self.running.values():
            running.process.kill()
            running.process.join()
        self.running.clear()


def _worker(setup: WorkerSetup, unit: UnitSpec, known: Known, gpu: int | None, parent: int, send) -> None:
    """A worker's entry: die with the driver, take its share of threads (and its GPU), run the
    unit's work, send back ("result", dict) or ("error", traceback)."""
    die_with_parent(parent)
    os.environ["OMP_NUM_THREADS"] = str(setup.threads)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from tinystudent.cli import quiet_libraries
    from tinystudent.experiments.runner import WORK
    from tinystudent.experiments.stages.common import StageContext
    from tinystudent.store import Store

    quiet_libraries()
    try:
        with Store(setup.db) as store:
            context = StageContext(setup.experiment, setup.data, store, Path(setup.out_dir), known, Path(setup.log_dir))
            answer: tuple = ("result", WORK[unit.kind](context, unit))
    except BaseException:
        answer = ("error", traceback.format_exc())
    send.send(answer)
    send.close()


def gpu_count(device: str) -> int:
    """GPUs the jobs can be spread over: 0 on a CPU run."""
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_threads(jobs: int) -> int:
    """Each worker's share of the threads this process was given."""
    from tinystudent.threads import configure_threads

    return max(1, configure_threads() // jobs)


def report_death(running: Running) -> bool:
    """Say a worker died; True when its unit gets another attempt."""
    code = running.process.exitcode
    again = running.attempt <= RETRIES
    warn(
        f"the worker of {running.unit.name} died (exit code {code})"
        + (f"; starting it again (attempt {running.attempt + 1})" if again else "; giving up")
    )
    return again
