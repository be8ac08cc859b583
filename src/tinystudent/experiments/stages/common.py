"""What every stage's work runs with: the study's context, isolated evaluation, training configs."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tinystudent.experiments.config import Experiment, ScoringPass, StudentSpec, parse_scoring_pass
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.units import EvalRequest, UnitSpec, evaluate_in_subprocess, unit_log
from tinystudent.folders import refuse_links
from tinystudent.store import Store
from tinystudent.tasks.schema import is_free_form

if TYPE_CHECKING:
    from tinystudent.distill import TrainConfig
    from tinystudent.experiments.plan_model import Known


@dataclass
class StageContext:
    """What a unit's work runs with.

    Attributes:
        experiment: the validated experiment.
        data: its questions.
        store: the results database.
        out_dir: the results folder (students, training runs, logs).
        known: what earlier units found; a unit reads the results of the units it needs here.
        log_dir: where each unit's log is (`units.unit_log`).
    """

    experiment: Experiment
    data: StudyData
    store: Store
    out_dir: Path
    known: Known
    log_dir: Path

    def log(self, unit: UnitSpec) -> Path:
        """The unit's log file (the unit runner opened it with the unit's payload)."""
        return unit_log(self.log_dir, unit.key)

    def run_dir(self, unit: UnitSpec) -> Path:
        """The folder a training unit keeps its checkpoints in, named like its log (refused when a
        part of it inside the results folder is a symbolic link)."""
        return refuse_links(self.out_dir / "runs" / self.log(unit).stem, self.out_dir)

    def needed(self, key: str) -> dict:
        """The result of a unit this one needs (it ran first)."""
        return self.known.results[key]

    def evaluate(
        self,
        model: str,
        unit: UnitSpec,
        part: str | None = None,
        split: str | None = None,
        limit: int | None = None,
        scoring: ScoringPass | None = None,
        budget: int | None = None,
        evidence: str | None = None,
    ) -> dict:
        """`model` on the test split (or `split`, first `limit` questions), in its own process,
        its inputs fitted to `budget` by the strategy `evidence` (default: the experiment's),
        logged to the unit's log and filed under its key (`key:part` when the unit evaluates
        several models)."""
        task = self.experiment.task
        scoring = scoring or parse_scoring_pass("zero_shot")
        request = EvalRequest(
            model=model,
            task=self.data.splits.task,
            split=split or task.test_split,
            limit=limit if split else task.test_limit,
            seed=task.seed,
            db=str(self.store.path),
            batch_size=self.experiment.eval_batch_size,
            device=self.experiment.device,
            mode=scoring.mode,
            num_fewshot=scoring.num_fewshot,
            max_input_tokens=budget or task.max_input_tokens,
            run_key=f"{unit.key}:{part}" if part else unit.key,
            evidence=evidence or task.evidence,
            samples=scoring.samples,
        )
        return evaluate_in_subprocess(request, self.log(unit))

    def student_scoring(self, taught_by_rationales: bool) -> ScoringPass:
        """How a student is judged on test: by its choices' scores; on a free-form task by what it
        writes, a chain of thought when rationales taught it (or nothing yet has), else the answer
        at once (as training judged it, `distill.loop`)."""
        if not is_free_form(self.data.splits.train):
            return parse_scoring_pass("zero_shot")
        return parse_scoring_pass("generate_cot" if taught_by_rationales else "generate")

    def train_config(self, student: StudentSpec | None = None, **options) -> TrainConfig:
        """The experiment's training block, the student's changes and `options` on top; inputs
        fitted to the experiment's budget and by its evidence strategy when it sets them."""
        from tinystudent.distill import TrainConfig

        task = self.experiment.task
        fitted: dict[str, int | str] = {"max_input_tokens": task.max_input_tokens} if task.max_input_tokens else {}
        if task.evidence != "cut":
            fitted["evidence"] = task.evidence
        changes = student.training.as_written() if student else {}
        return TrainConfig(**{**self.experiment.training.as_written(), **fitted, **changes, **options})

    def bits_per_byte(self, loaded, text: str | None = None) -> float:
        """`loaded`'s bits per byte on the held-out text (`text`, when given, is that text), cached
        in the store."""
        from tinystudent.evaluation.bits_per_byte import cached_bits_per_byte

        where = f"task:{self.experiment.task.name}/validation"
        return cached_bits_per_byte(loaded, text or self.data.heldout, where, self.store, window=512)["bits_per_byte"]


def release() -> None:
    """Drop models loaded for a unit before the next one, so memory does not pile up."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def write_loss_history(log: Path, history) -> None:
    """A training run's losses, one row a line, into its unit's log."""
    with log.open("a") as handle:
        for row in history:
            handle.write(f"{row}\n")
