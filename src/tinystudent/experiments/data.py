"""The questions a study works on, read once before it is planned: its splits and their hashes."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from tinystudent.experiments.config import Experiment
from tinystudent.tasks import Example, data_hash, load_task
from tinystudent.tasks.contamination import check_contamination, drop_contaminated
from tinystudent.tasks.schema import is_free_form

HELDOUT_BYTES = 12000


@dataclass
class Splits:
    task: str
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    origin: dict

    def hashes(self) -> dict:
        return {"train": data_hash(self.train), "valid": data_hash(self.valid), "test": data_hash(self.test)}


def load_splits(experiment: Experiment) -> Splits:
    spec = experiment.task
    data = load_task(spec.name, seed=spec.seed)
    cut = lambda rows, limit: rows[:limit] if limit else rows  # noqa: E731
    return Splits(
        spec.name,
        cut(data.split("train"), spec.train_limit),
        cut(data.split("validation"), spec.valid_limit),
        cut(data.split(spec.test_split), spec.test_limit),
        data.origin,
    )


@dataclass
class StudyData:
    """Everything a study's units are keyed by besides its config: the splits, and the training
    questions of the tasks students recover on (`recover.extra_tasks`)."""

    splits: Splits
    extra_train: dict[str, list[Example]] = field(default_factory=dict)
    contamination: dict = field(default_factory=dict)  # what was compared with the test questions

    @cached_property
    def hashes(self) -> dict:
        return self.splits.hashes()

    @cached_property
    def heldout(self) -> str:
        """The text every causal student's bits per byte is measured on, before and after any
        recovery: the validation questions with their evidence and choices (never trained on)."""
        from tinystudent.evaluation.bits_per_byte import task_corpus, truncate_utf8

        return truncate_utf8(task_corpus(self.splits.valid), HELDOUT_BYTES)

    @cached_property
    def train_ids(self) -> set[str]:
        return {ex.id for ex in self.splits.train}


def load_study_data(experiment: Experiment) -> StudyData:
    """Read the experiment's task (and the tasks its students recover on), and check that none of
    their questions is a test question (`tasks.contamination`); nothing is written.

    Raises:
        Contamination: naming the training or validation questions that are test questions.
    """
    extra_tasks = {name for s in experiment.students if s.recover for name in s.recover.extra_tasks}
    splits = load_splits(experiment)
    if is_free_form(splits.train):
        experiment.check_free_form()
    elif experiment.collaboration and experiment.collaboration.self_consistency:
        raise ValueError(
            f"collaboration.self_consistency votes over written answers; task {experiment.task.name!r} has choices "
            "(use ensemble: true, whose vote is over the members' choices)"
        )
    extra = {name: load_task(name).split("train") for name in sorted(extra_tasks)}
    learnt: dict[str, list[Example]] = {
        "train": splits.train,
        "validation": splits.valid,
        **{f"{name} train": rows for name, rows in extra.items()},
    }
    dropped: dict[str, list[str]] = {}
    if experiment.task.contamination == "drop":
        learnt, dropped = drop_contaminated(splits.test, learnt)
        splits.train, splits.valid = learnt["train"], learnt["validation"]
        extra = {name: learnt[f"{name} train"] for name in extra}
    checked = check_contamination(splits.test, learnt)
    return StudyData(splits, extra, {**checked, "dropped": dropped} if dropped else checked)


__all__ = ["HELDOUT_BYTES", "Splits", "StudyData", "load_splits", "load_study_data"]
