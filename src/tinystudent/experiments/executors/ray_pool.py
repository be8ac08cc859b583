"""Units as Ray tasks (`executor: ray`), on a running cluster (`ray.address`) or a local one.

Each unit whose inputs are ready is submitted at once as a task asking for the unit's resources
(`resources`); Ray schedules them over the cluster and starts a task again when its worker dies
(`RETRIES` times), not we. A task computes its unit against a database of its own and returns the
outbox (`remote_unit`); the driver records it. Workers need tinystudent installed (the same
version) and the model files or Hub access; the results folder need not be shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tinystudent.experiments.executors import ENGINES, RETRIES, Finished, PoolSetup, missing_extra
from tinystudent.experiments.executors.remote_unit import compute, finished, prepare
from tinystudent.experiments.executors.resources import unit_resources
from tinystudent.experiments.plan_model import Known
from tinystudent.experiments.units import UnitSpec
from tinystudent.log import info


@dataclass
class Task:
    unit: UnitSpec
    ref: Any  # the task's ObjectRef
    started: float
    attempt: int


class RayPool:
    """Every ready unit as a Ray task at once; Ray decides where and when each runs."""

    def __init__(self, study: PoolSetup):
        try:
            import ray
        except ImportError:
            raise missing_extra(*ENGINES["ray"]) from None
        self.ray, self.study = ray, study
        spec = study.experiment.executor.ray
        self.owns_cluster = not ray.is_initialized()
        if self.owns_cluster:
            options: dict[str, Any] = {"address": spec.address, "num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus}
            ray.init(
                **{k: v for k, v in options.items() if v is not None},
                include_dashboard=False,
                log_to_driver=False,
            )
        info(f"Ray: {ray.cluster_resources()}")
        self.task = ray.remote(max_retries=RETRIES)(compute)
        self.running: dict[str, Task] = {}

    @property
    def free(self) -> int:
        return 1_000_000  # Ray queues what does not fit yet

    def running_keys(self) -> set[str]:
        return set(self.running)

    def start(self, unit: UnitSpec, known: Known, started: float, attempt: int = 1, at_once: int = 1) -> None:
        study = self.study
        resources = unit_resources(unit, study.experiment)
        job = prepare(study, unit, known)
        options: dict = {"num_cpus": resources.cpus, "num_gpus": resources.gpus, "name": unit.name}
        if resources.memory_bytes is not None:
            options["memory"] = resources.memory_bytes
        self.running[unit.key] = Task(unit, self.task.options(**options).remote(job), started, attempt)

    def submit(self) -> None:
        """Nothing to do: `start` submitted the task."""

    def next_finished(self) -> Finished:
        if not self.running:
            raise RuntimeError("no unit of the plan can start: each waits for a unit that has not run")
        ready, _ = self.ray.wait([t.ref for t in self.running.values()], num_returns=1)
        task = next(t for t in self.running.values() if t.ref == ready[0])
        del self.running[task.unit.key]
        try:
            outbox = self.ray.get(task.ref)
        except self.ray.exceptions.RayError as error:  # its worker died more often than Ray retries
            outbox = {"error": f"the Ray task failed: {type(error).__name__}: {error}\n"}
        return finished(task.unit, task.started, task.attempt, outbox)

    def stop(self) -> None:
        for task in self.running.values():
            self.ray.cancel(task.ref, force=True)
        self.running.clear()
        if self.owns_cluster:
            self.ray.shutdown()
