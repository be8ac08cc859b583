"""Where the units of a study run: `local` (this machine, `jobs` at a time), `ray` (Ray tasks) or
`slurm` (SLURM jobs through submitit); the experiment's `executor` block, or `run --executor`.

Every executor is a pool the runner drives the same way: it `start`s each unit whose inputs are
ready, `submit`s them, and waits for the `next_finished`; the runner alone records units in the
results database, and plans again as each one finishes. Workers on this machine (`local_pool`)
write to the results database as a single process would; workers elsewhere (`ray_pool`,
`slurm_pool`) compute against a database of their own and hand back what they wrote
(`remote_unit`, `unit_store`), which the runner records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.plan_model import Known
from tinystudent.experiments.units import UnitSpec
from tinystudent.store import Store

RETRIES = 2  # restarts of a unit whose worker died without an answer (Ray retries its own tasks)


@dataclass
class Finished:
    """A unit a worker is done with: its result (and, from elsewhere, the rows its work wrote and
    the path of the database it wrote them to), or its error, or neither when the worker died
    (`death` says how: an exit code, a job's state and the end of its log)."""

    unit: UnitSpec
    started: float
    attempt: int
    result: dict | None = None
    rows: dict | None = None
    unit_db: str | None = None
    error: str | None = None
    death: str = ""

    @property
    def died(self) -> bool:
        return self.result is None and self.error is None


class Pool(Protocol):
    """Runs units somewhere; see the module's documentation. `start`'s `at_once` is how many units
    will run together, for a pool that shares this machine's threads among them."""

    @property
    def free(self) -> int: ...

    def running_keys(self) -> set[str]: ...

    def start(self, unit: UnitSpec, known: Known, started: float, attempt: int = 1, at_once: int = 1) -> None: ...

    def submit(self) -> None: ...

    def next_finished(self) -> Finished: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class PoolSetup:
    """What a pool needs of the study it runs units of."""

    experiment: Experiment
    data: StudyData
    store: Store
    out_dir: Path
    log_dir: Path


def make_pool(study: PoolSetup) -> Pool:
    """The pool of the experiment's executor (its extra must be installed for ray and slurm)."""
    executor = study.experiment.executor
    if executor.kind == "ray":
        from tinystudent.experiments.executors.ray_pool import RayPool

        return RayPool(study)
    if executor.kind == "slurm":
        from tinystudent.experiments.executors.slurm_pool import SlurmPool

        return SlurmPool(study)
    from tinystudent.experiments.executors.local_pool import LocalPool

    return LocalPool(study)


ENGINES = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # executor: (module, extra)


def check_engine(kind: str) -> None:
    """Fail as the executor would when its engine is not installed (for `run --check`)."""
    import importlib.util

    if kind in ENGINES:
        module, extra = ENGINES[kind]
        if importlib.util.find_spec(module) is None:
            raise missing_extra(module, extra)


def missing_extra(engine: str, extra: str) -> RuntimeError:
    """The error for an executor whose engine is not installed."""
    return RuntimeError(
        f"the {extra} executor needs {engine}, which is not installed: pip install 'tinystudent[{extra}]' "
        f"(or pip install {engine}), or run with --executor local"
    )
