"""Several units of a study at once on this machine (`executor: local`, `run --jobs N`).

Up to `jobs` worker processes (multiprocessing "spawn") each compute one unit after another, so the
libraries are imported once per worker, not per unit. A unit gets the CPU threads shared among the
units that run with it, and a training run follows its share as units start and end (it takes them
all when left alone, as the last training run of a study often is). On a machine with several GPUs
each worker has one of them. A worker writes what its work writes (its log, its folder, its
evaluations, into the results database like any process on this machine); the driver records the
units. When a worker dies without an answer (killed, out of memory), the runner gives its unit to a
new one, up to `RETRIES` times: the unit resumes from its checkpoint.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.executors import Finished, PoolSetup
from tinystudent.experiments.plan_model import Known
from tinystudent.experiments.units import UnitSpec, die_with_parent
from tinystudent.log import quiet_libraries
from tinystudent.threads import configure_threads


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker is started with (it opens its own connection to the database)."""

    experiment: Experiment
    data: StudyData
    db: str
    out_dir: str
    log_dir: str


@dataclass
class Running:
    """A unit being computed by a worker."""

    unit: UnitSpec
    started: float
    attempt: int = 1


@dataclass
class Worker:
    """A spawned process that computes one unit after another (it imports the libraries once)."""

    process: multiprocessing.process.BaseProcess
    connection: Any  # our end of its duplex pipe
    share: Any  # a shared integer: the threads it should use now (`threads.keep_share`)
    gpu: int | None
    task: Running | None = None


class LocalPool:
    """Up to `jobs` units at once, each in one of `jobs` spawned worker processes."""

    def __init__(self, study: PoolSetup):
        self.setup = WorkerSetup(
            study.experiment, study.data, str(study.store.path), str(study.out_dir), str(study.log_dir)
        )
        self.jobs, self.gpus = study.experiment.executor.jobs, gpu_count(study.experiment.device)
        self.threads = configure_threads()
        self.workers: list[Worker] = []

    @property
    def free(self) -> int:
        return self.jobs - sum(w.task is not None for w in self.workers)

    def running_keys(self) -> set[str]:
        return {w.task.unit.key for w in self.workers if w.task is not None}

    def start(self, unit: UnitSpec, known: Known, started: float, attempt: int = 1, at_once: int = 1) -> None:
        """Give `unit` to an idle worker (started when there is none), with the threads of this
        machine shared among the `at_once` units that run together."""
        threads = self.share_of(at_once)
        for worker in [w for w in self.workers if w.task is None]:
            try:
                worker.connection.send((unit, known, threads))
            except OSError:  # it died while idle: let it go
                self.forget(worker)
                continue
            worker.task = Running(unit, started, attempt)
            self.rebalance(at_once)
            return
        worker = self.new_worker()
        worker.connection.send((unit, known, threads))
        worker.task = Running(unit, started, attempt)
        self.rebalance(at_once)

    def share_of(self, running: int) -> int:
        """Each unit's threads when `running` units run together."""
        return max(1, self.threads // max(1, min(running, self.jobs)))

    def rebalance(self, running: int | None = None) -> None:
        """Tell every busy worker its share of the threads: a unit left alone takes them all."""
        busy = [w for w in self.workers if w.task is not None]
        for worker in busy:
            worker.share.value = self.share_of(max(running or 0, len(busy)))

    def forget(self, worker: Worker) -> None:
        worker.connection.close()
        worker.process.join()
        self.workers.remove(worker)

    def new_worker(self) -> Worker:
        """A new worker process, on a GPU no other worker holds when there are GPUs."""
        held = {w.gpu for w in self.workers}
        gpu = next((g for g in range(self.gpus) if g not in held), None) if self.gpus else None
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        share = context.Value("i", 0, lock=False)
        process = context.Process(target=_worker, args=(self.setup, gpu, os.getpid(), theirs, share))
        process.start()
        theirs.close()  # the worker holds the only other end: its exit ends recv
        self.workers.append(Worker(process, ours, share, gpu))
        return self.workers[-1]

    def submit(self) -> None:
        """Nothing to do: `start` handed the unit to its worker."""

    def next_finished(self) -> Finished:
        """Wait for a worker to finish its unit: its result or error, or neither when it died
        (then the worker is gone, and a new one takes the next unit)."""
        busy = [w for w in self.workers if w.task is not None]
        if not busy:
            raise RuntimeError("no unit of the plan can start: each waits for a unit that has not run")
        ready = wait([w.connection for w in busy])
        worker = next(w for w in busy if w.connection in ready)
        task, worker.task = worker.task, None
        assert task is not None
        self.rebalance()
        finished = Finished(task.unit, task.started, task.attempt)
        try:
            tag, value = worker.connection.recv()
        except EOFError:
            self.forget(worker)
            finished.death = f"exit code {worker.process.exitcode}"
            return finished
        if tag == "result":
            finished.result = value
        else:
            finished.error = value
        return finished

    def stop(self) -> None:
        """End every worker (a unit under way resumes from its checkpoint next time)."""
        for worker in self.workers:
            worker.process.kill()
            worker.process.join()
            worker.connection.close()
        self.workers.clear()


def _worker(setup: WorkerSetup, gpu: int | None, parent: int, connection, share) -> None:
    """A worker's entry: die with the driver, take its GPU, then compute each unit it is sent
    with the threads it is given (and, in training, those `share` says as other units start and
    end), answering ("result", dict) or ("error", traceback)."""
    die_with_parent(parent)
    from tinystudent.threads import follow_share

    follow_share(share)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from tinystudent.experiments.stages.common import StageContext, release
    from tinystudent.experiments.work import WORK
    from tinystudent.store import Store
    from tinystudent.threads import use_threads

    quiet_libraries()
    with Store(setup.db, check=False) as store:  # the driver checked it on open
        while True:
            try:
                unit, known, threads = connection.recv()
            except EOFError:  # the driver is done with us
                return
            use_threads(threads)
            try:
                out_dir, log_dir = Path(setup.out_dir), Path(setup.log_dir)
                context = StageContext(setup.experiment, setup.data, store, out_dir, known, log_dir)
                answer: tuple = ("result", WORK[unit.kind](context, unit))
            except Exception:
                answer = ("error", traceback.format_exc())
            release()
            connection.send(answer)


def gpu_count(device: str) -> int:
    """GPUs the jobs can be spread over: 0 on a CPU run."""
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
