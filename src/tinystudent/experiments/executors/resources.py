"""What each unit asks its executor for: CPU cores, GPUs, memory.

Every unit that loads a model asks for one GPU when the experiment runs on CUDA and none
otherwise, one CPU core, and no set memory; `executor.resources` in the experiment changes this
per unit kind (`default` for the kinds it does not name). Units that only read stored results
(ensembles) run in the driver and ask for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.units import UnitSpec

IN_DRIVER = ("ensemble",)  # read stored predictions and load no model: the driver runs them


@dataclass(frozen=True)
class Resources:
    cpus: int = 1
    gpus: int = 0
    memory_gb: float | None = None

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_gb is None else int(self.memory_gb * 2**30)


def unit_resources(unit: UnitSpec, experiment: Experiment) -> Resources:
    """What `unit` asks for: the experiment's declaration for its kind, else for `default`, over
    the built-in defaults."""
    declared = experiment.executor.resources
    spec = declared.get(unit.kind) or declared.get("default")
    gpus = 1 if experiment.device.startswith("cuda") else 0
    base = Resources(gpus=gpus)
    if spec is None:
        return base
    return Resources(
        cpus=spec.cpus if spec.cpus is not None else base.cpus,
        gpus=spec.gpus if spec.gpus is not None else base.gpus,
        memory_gb=spec.memory_gb if spec.memory_gb is not None else base.memory_gb,
    )
