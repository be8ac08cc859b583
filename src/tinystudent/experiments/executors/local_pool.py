"""Several units of a study at once on this machine (`executor: local`, `run --jobs N`).

Each unit whose inputs are ready is started in a fresh process (multiprocessing "spawn"), up to
`jobs` at a time, each with its share of the CPU threads; on a machine with several GPUs each
job gets one of them. A worker writes what its work writes (its log, its folder, its
evaluations, into the results database like any process on this machine); the driver records
the units. A worker that dies without an answer (killed, out of memory) is started again by the
runner, up to `RETRIES` times: its unit resumes from its checkpoint.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.executors import Finished, PoolSetup
from tinystudent.experiments.plan import Known
from tinystudent.experiments.units import UnitSpec, die_with_parent


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


class LocalPool:
    """Up to `jobs` units at once, each in its own spawned process."""

    def __init__(self, study: PoolSetup):
        jobs = study.experiment.executor.jobs
        self.setup = WorkerSetup(
            study.experiment,
            study.data,
            str(study.store.path),
            str(study.out_dir),
            str(study.log_dir),
            worker_threads(jobs),
        )
        self.jobs, self.gpus = jobs, gpu_count(study.experiment.device)
        self.running: dict[str, Running] = {}

    @property
    def free(self) -> int:
        return self.jobs - len(self.running)

    def running_keys(self) -> set[str]:
        return set(self.running)

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

    def submit(self) -> None:
        """Nothing to do: `start` started the worker."""

    def next_finished(self) -> Finished:
        """Wait for a worker to finish: its result or error, or neither when it died."""
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
        finished = Finished(done.unit, done.started, done.attempt, death=f"exit code {done.process.exitcode}")
        if tag == "result":
            finished.result = value
        elif tag == "error":
            finished.error = value
        return finished

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
