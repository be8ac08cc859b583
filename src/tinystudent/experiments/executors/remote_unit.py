"""One unit computed by a worker on another machine (a Ray task, a SLURM job).

The worker gets everything as arguments (`RemoteUnit`), computes the unit against a database of
its own (`unit_store`) in the unit's folder, `<results folder>/units/<kind-hash>/`, and answers
with an outbox: the result and the rows its work wrote, or the error. The driver records both.
A worker stopped half-way (preempted, its node lost) and started again finds the unit's folder
as it left it, so the unit resumes: training from its last checkpoint, teaching from the outputs
its database already holds.
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.executors import Finished, PoolSetup
from tinystudent.experiments.plan_model import Known
from tinystudent.experiments.units import UnitSpec
from tinystudent.log import quiet_libraries

OUTBOX = "outbox.json"
UNIT_DB = "unit.sqlite"


@dataclass(frozen=True)
class RemoteUnit:
    """A unit with everything its work reads: the study, what earlier units found, the cached
    rows it may reuse, the folders it writes to and its share of CPU threads."""

    experiment: Experiment
    data: StudyData
    out_dir: str
    log_dir: str
    unit: UnitSpec
    known: Known
    seed: dict
    threads: int

    @property
    def folder(self) -> Path:
        return unit_folder(Path(self.out_dir), self.unit)


def prepare(study: PoolSetup, unit: UnitSpec, known: Known) -> RemoteUnit:
    """`unit` of `study` with all its work reads, seeded from the results database now, and the
    CPUs it asks for as its threads."""
    from tinystudent.experiments.executors.resources import unit_resources
    from tinystudent.experiments.executors.unit_store import seed_rows

    return RemoteUnit(
        study.experiment,
        study.data,
        str(study.out_dir),
        str(study.log_dir),
        unit,
        known,
        seed_rows(study.store, study.data.splits.task, unit.kind),
        unit_resources(unit, study.experiment).cpus,
    )


def unit_folder(out_dir: Path, unit: UnitSpec) -> Path:
    """Where a unit computed elsewhere keeps its database and outbox."""
    return out_dir / "units" / unit.key.replace(":", "-", 1)


def compute(job: RemoteUnit) -> dict:
    """Compute the unit in its folder; returns its outbox: `{"result", "rows", "unit_db"}` or
    `{"error"}` (a traceback). Only an error of the unit's work is answered; an exit asked for
    from outside (a preemption signal) goes on up, so the job can be requeued."""
    from tinystudent.threads import use_threads

    use_threads(job.threads)
    from tinystudent.experiments.executors.unit_store import create_unit_store, written_rows
    from tinystudent.experiments.stages.common import StageContext
    from tinystudent.experiments.work import WORK
    from tinystudent.store import Store

    quiet_libraries()
    unit_db = job.folder / UNIT_DB
    try:
        create_unit_store(unit_db, job.seed)
        with Store(unit_db, journal="delete") as store:
            context = StageContext(job.experiment, job.data, store, Path(job.out_dir), job.known, Path(job.log_dir))
            result = WORK[job.unit.kind](context, job.unit)
            rows = written_rows(store, job.seed)
        return {"result": json.loads(json.dumps(result, default=str)), "rows": rows, "unit_db": str(unit_db)}
    except Exception:
        return {"error": traceback.format_exc()}


def write_outbox(folder: Path, outbox: dict) -> None:
    """Leave the outbox in the unit's folder, complete or not at all (written aside, renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (OUTBOX + ".partial")
    partial.write_text(json.dumps(outbox, default=str))
    os.replace(partial, folder / OUTBOX)


def read_outbox(folder: Path) -> dict | None:
    """The outbox a worker left in the unit's folder, or None."""
    path = folder / OUTBOX
    return json.loads(path.read_text()) if path.exists() else None


def finished(unit: UnitSpec, started: float, attempt: int, outbox: dict) -> Finished:
    """A worker's outbox as the runner reads it."""
    return Finished(
        unit,
        started,
        attempt,
        result=outbox.get("result"),
        rows=outbox.get("rows"),
        unit_db=outbox.get("unit_db"),
        error=outbox.get("error"),
    )
