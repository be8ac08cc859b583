"""Units as SLURM jobs through submitit (`executor: slurm`).

The units ready at the same time are submitted together, as one job array per set of resources
(partition, time limit, GPUs, CPUs and memory from the experiment's `executor` block). A job
computes its unit against a database of its own in the unit's folder and leaves its outbox there
(`remote_unit`); the driver polls for outboxes and records them. A job that ends without one
(killed, out of memory, its node lost) is submitted again by the runner, up to `RETRIES` times. The results folder must be on a
file system every node sees.

Preemption and time limits: submitit catches SLURM's warning signal, and the job (`UnitJob`, a
checkpointable callable) is requeued with the same arguments; the unit resumes from what its
folder holds (training checkpoints, the unit's database). A unit whose outbox exists is never
submitted again, even by a later driver, so a unit finished while no driver waited is read back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tinystudent.experiments.executors import ENGINES, Finished, PoolSetup, missing_extra
from tinystudent.experiments.executors.remote_unit import (
    OUTBOX,
    RemoteUnit,
    compute,
    finished,
    prepare,
    read_outbox,
    unit_folder,
    write_outbox,
)
from tinystudent.experiments.executors.resources import Resources, unit_resources
from tinystudent.experiments.plan_model import Known
from tinystudent.experiments.units import UnitSpec
from tinystudent.log import info

try:
    import submitit
except ImportError:  # the pool says what to install when it is asked for
    submitit = None  # type: ignore[assignment]


class UnitJob(submitit.helpers.Checkpointable if submitit else object):  # type: ignore[misc]
    """What a SLURM job runs: one unit, its outbox left in the unit's folder. Checkpointable:
    preempted or out of time, it is requeued with the same arguments and resumes."""

    def __call__(self, job: RemoteUnit) -> str:
        outbox = compute(job)
        write_outbox(job.folder, outbox)
        return "error" if "error" in outbox else "done"


@dataclass
class Job:
    unit: UnitSpec
    job: object | None  # the submitit job; None for a unit an earlier driver's job finished
    started: float
    attempt: int


@dataclass
class Queued:
    unit: UnitSpec
    remote: RemoteUnit
    resources: Resources
    started: float
    attempt: int


class SlurmPool:
    """Ready units as SLURM job arrays; finished units found by their outboxes."""

    def __init__(self, study: PoolSetup):
        if submitit is None:
            raise missing_extra(*ENGINES["slurm"])
        self.study, self.spec = study, study.experiment.executor.slurm
        folder = Path(self.spec.folder) if self.spec.folder else study.out_dir / "slurm"
        requeues = self.spec.max_requeues
        self.executor = submitit.AutoExecutor(
            folder=folder / "%j",
            cluster=self.spec.cluster,
            slurm_max_num_timeout=requeues,
            local_max_num_timeout=requeues,
        )
        info(f"SLURM: submitting through submitit ({self.executor.cluster}), job files in {folder}")
        self.queued: list[Queued] = []
        self.running: dict[str, Job] = {}

    @property
    def free(self) -> int:
        return 1_000_000  # SLURM queues what does not fit yet

    def running_keys(self) -> set[str]:
        return set(self.running) | {q.unit.key for q in self.queued}

    def start(self, unit: UnitSpec, known: Known, started: float, attempt: int = 1, at_once: int = 1) -> None:
        """Queue `unit` for the next `submit`, unless a job left its result already."""
        study = self.study
        folder = unit_folder(study.out_dir, unit)
        outbox = read_outbox(folder)
        if outbox is not None and "result" in outbox:
            self.running[unit.key] = Job(unit, None, started, attempt)
            return
        (folder / OUTBOX).unlink(missing_ok=True)  # an earlier attempt's error
        resources = unit_resources(unit, study.experiment)
        remote = prepare(study, unit, known)
        self.queued.append(Queued(unit, remote, resources, started, attempt))

    def submit(self) -> None:
        """Submit the queued units, one job array per set of resources."""
        for resources in dict.fromkeys(q.resources for q in self.queued):
            group = [q for q in self.queued if q.resources == resources]
            self.executor.update_parameters(**self.parameters(resources))
            with self.executor.batch():
                jobs = [self.executor.submit(UnitJob(), q.remote) for q in group]
            for queued, job in zip(group, jobs):
                self.running[queued.unit.key] = Job(queued.unit, job, queued.started, queued.attempt)
                info(f"submitted {queued.unit.name} as job {job.job_id}")
        self.queued.clear()

    def parameters(self, resources: Resources) -> dict:
        spec = self.spec
        parameters = {
            "name": f"tinystudent-{self.study.experiment.name}",
            "timeout_min": spec.time_minutes,
            "gpus_per_node": spec.gpus_per_node if spec.gpus_per_node is not None else resources.gpus,
            "cpus_per_task": spec.cpus_per_task or resources.cpus,
            "mem_gb": spec.mem_gb or resources.memory_gb,
            "slurm_partition": spec.partition,
            "slurm_additional_parameters": dict(spec.additional) or None,
        }
        return {k: v for k, v in parameters.items() if v is not None}

    def next_finished(self) -> Finished:
        """Wait for a unit's outbox, or for a job that ended without leaving one."""
        if not self.running:
            raise RuntimeError("no unit of the plan can start: each waits for a unit that has not run")
        while True:
            for key, job in list(self.running.items()):
                outbox = read_outbox(unit_folder(self.study.out_dir, job.unit))
                if outbox is not None:
                    del self.running[key]
                    return finished(job.unit, job.started, job.attempt, outbox)
                if job.job is not None and job.job.done():  # type: ignore[attr-defined]
                    del self.running[key]
                    return Finished(job.unit, job.started, job.attempt, death=ended_without_answer(job.job))
            time.sleep(self.spec.poll_seconds)

    def stop(self) -> None:
        """Cancel the jobs still running (their units resume from their folders next time)."""
        for job in self.running.values():
            if job.job is not None and not job.job.done():  # type: ignore[attr-defined]
                job.job.cancel(check=False)  # type: ignore[attr-defined]
        self.running.clear()
        self.queued.clear()


def ended_without_answer(job) -> str:
    """What a job that ended without an outbox says about why (its state, the end of its log)."""
    try:
        log = [line for line in (job.stderr() or "").splitlines() if line.strip()]
    except OSError:
        log = []
    return f"SLURM job {job.job_id}: {job.state}" + (f", its log ends: {log[-1].strip()}" if log else "")
