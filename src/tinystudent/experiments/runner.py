"""`tinystudent run`: measure the teachers, gather their outputs, train and measure every student.

The recipe: read the task, then run the plan (`experiments.plan`) one unit at a time: teachers,
students, training, collaboration or the loss-guided search. Every unit is keyed by what it
depends on (see `units`), so the runner can be killed at any point and run again: finished units
are read back from the store, training resumes from its last checkpoint, and a changed part of
the config reruns only what depends on it. Last, the study is assembled, stored and returned.
"""

from __future__ import annotations

from pathlib import Path

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import Splits, StudyData, load_splits, load_study_data
from tinystudent.experiments.executors import RETRIES, PoolSetup, make_pool
from tinystudent.experiments.executors.resources import IN_DRIVER
from tinystudent.experiments.executors.unit_store import import_rows, renumber
from tinystudent.experiments.plan import make_plan
from tinystudent.experiments.plan_model import Known, Plan
from tinystudent.experiments.stages.common import StageContext
from tinystudent.experiments.study import build_study
from tinystudent.experiments.units import UnitRunner, UnitSpec
from tinystudent.experiments.work import WORK, learn
from tinystudent.folders import refuse_links
from tinystudent.log import info, warn
from tinystudent.store import Store

# What a study writes in its results folder: none may be a symbolic link (checked before any unit
# runs; each write checks its own path again, `folders.refuse_links`).
RESULT_FOLDERS = ("logs", "runs", "students", "units", "slurm", "mlruns", "report", "report/figures")


class ExperimentRunner:
    """Runs one experiment's plan; `run()` returns the study dict the report renders."""

    def __init__(self, experiment: Experiment, store: Store, out_dir: Path):
        self.experiment, self.store, self.out_dir = experiment, store, Path(out_dir)
        for folder in RESULT_FOLDERS:
            refuse_links(self.out_dir / folder, self.out_dir)
        self.units = UnitRunner(store, experiment.name, self.out_dir / "logs")
        self.data: StudyData = load_study_data(experiment)
        self.known = Known()
        self.context = StageContext(experiment, self.data, store, self.out_dir, self.known, self.units.log_dir)
        self.said: set[str] = set()

    def run(self) -> dict:
        self.announce()
        finished = self.run_plan()
        study = build_study(finished, skipped=len(self.units.skipped), computed=len(self.units.done)).to_dict()
        name = self.experiment.name
        self.store.save_run(f"study:{name}", "study", "done", {"experiment": name}, study, name)
        self.track(study)
        return study

    def announce(self) -> None:
        splits, task = self.data.splits, self.experiment.task
        info(
            f"experiment {self.experiment.name}: task {splits.task} (train {len(splits.train)}, "
            f"validation {len(splits.valid)}, {task.test_split} {len(splits.test)})"
        )

    def run_plan(self) -> Plan:
        """Run the first unit not run yet, learn what it found, plan again; until none is left."""
        executor = self.experiment.executor
        if executor.kind != "local" or executor.jobs > 1:
            return self.run_plan_in_pool()
        while True:
            current = make_plan(self.experiment, self.data, self.known)
            self.say(current.notes)
            pending = next((unit for unit in current.units if unit.key not in self.known.results), None)
            if pending is None:
                return current
            self.run_unit(pending)

    def run_plan_in_pool(self) -> Plan:
        """Run every unit whose inputs are ready at once, in the executor's pool (`executors`);
        plan again as each finishes."""
        pool = make_pool(PoolSetup(self.experiment, self.data, self.store, self.out_dir, self.units.log_dir))
        try:
            while True:
                current = make_plan(self.experiment, self.data, self.known)
                self.say(current.notes)
                pending = [u for u in current.units if u.key not in self.known.results]
                if not pending and not pool.running_keys():
                    return current
                if self.start_ready(pool, pending):
                    continue  # a unit was read back or run here: plan again before waiting
                pool.submit()
                self.collect(pool)
        finally:
            pool.stop()

    def start_ready(self, pool, pending: list[UnitSpec]) -> bool:
        """Start the pending units whose inputs are ready while the pool has room; True when one
        was found done in the store, or was run here (it reads stored results and loads no
        model), instead: its result is learnt at once."""
        running = pool.running_keys()
        ready = [u for u in pending if u.key not in running and all(k in self.known.results for k in u.needs)]
        for unit in ready:
            stored = self.units.stored(unit.kind, unit.name, unit.payload)
            if stored is not None:
                learn(self.known, self.store, self.data, unit, stored)
                return True
            if unit.kind in IN_DRIVER:
                self.run_unit(unit)
                return True
        for unit in ready[: pool.free]:
            at_once = len(running) + min(len(ready), pool.free)
            pool.start(unit, self.known, self.units.begin(unit.kind, unit.name, unit.payload), at_once=at_once)
        return False

    def collect(self, pool) -> None:
        """Wait for one unit; record and learn its result (with the rows a worker elsewhere wrote),
        start it again if its worker died, or fail."""
        done = pool.next_finished()
        unit = done.unit
        if done.result is not None:
            result = self.record_rows(done) if done.rows is not None else done.result
            result = self.units.finish(unit.kind, unit.name, unit.payload, result, done.started)
            learn(self.known, self.store, self.data, unit, result)
            return
        again = done.died and done.attempt <= RETRIES
        if done.died:
            warn(
                f"the worker of {unit.name} died ({done.death})"
                + (f"; starting it again (attempt {done.attempt + 1})" if again else "; giving up")
            )
        if again:
            pool.start(unit, self.known, done.started, done.attempt + 1, at_once=len(pool.running_keys()) + 1)
            return
        self.units.failed(unit.kind, unit.name, unit.payload, done.error or "the worker died\n")
        last = (done.error or "the worker died").strip().splitlines()[-1]
        raise RuntimeError(f"{unit.name} failed (see {self.context.log(unit)}): {last}")

    def record_rows(self, done) -> dict:
        """Write what a worker elsewhere stored into the results database; returns its result
        with the evaluation ids it names renumbered to theirs here."""
        ids = import_rows(self.store, done.rows)
        return renumber(done.result, ids, done.unit_db, str(self.store.path))  # type: ignore[return-value]

    def run_unit(self, unit: UnitSpec) -> None:
        """Run (or read back) one unit and keep what later units and the study need of it."""
        work = WORK[unit.kind]
        result = self.units.run(unit.kind, unit.name, unit.payload, lambda: work(self.context, unit))
        learn(self.known, self.store, self.data, unit, result)

    def say(self, notes: list[str]) -> None:
        for note in notes:
            if note not in self.said:
                self.said.add(note)
                info(note)

    def track(self, study: dict) -> None:
        if self.experiment.mlflow:
            from tinystudent.experiments.tracking import log_study, tracking_uri

            uri = tracking_uri(self.experiment.mlflow, self.out_dir)
            info(f"MLflow: logged {log_study(study, self.experiment.name, uri)} new run(s) to {uri}")


def run_experiment(experiment: Experiment, store: Store, out_dir: Path) -> dict:
    """Run (or resume) `experiment`, store every number, and return the study. Its `executor`
    says where units run: one after another here, or those whose inputs are ready at once."""
    return ExperimentRunner(experiment, store, out_dir).run()


__all__ = ["ExperimentRunner", "Splits", "load_splits", "run_experiment"]
