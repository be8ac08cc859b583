"""`tinystudent run --plan`: the units a study will run, before paying for them.

The plan is replayed against the results database: every unit already stored there is read back
(so the units it lets the plan name are listed too) and counted as done. For the units left, the
cost of each is the median time units of its kind took in this database, or a default per kind
when none has run yet. The critical path is the longest chain of units left through what each
needs: no number of workers finishes the study faster than it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from tinystudent.experiments.config import Experiment
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.plan import make_plan
from tinystudent.experiments.plan_model import Known
from tinystudent.experiments.units import UnitSpec
from tinystudent.experiments.work import learn
from tinystudent.store import Store

# Seconds a unit of each kind takes when the database has measured none: a small model on one
# device (a GPU for the training kinds). Measured costs replace them as units finish.
DEFAULT_SECONDS = {
    "teacher_eval": 600.0,
    "teach": 1800.0,
    "import": 10.0,
    "choice_scores": 300.0,
    "cut": 30.0,
    "recover": 1800.0,
    "student": 60.0,
    "student_eval": 300.0,
    "train": 1800.0,
    "debate": 900.0,
    "ensemble": 5.0,
    "mutual": 3600.0,
    "self_consistency": 1800.0,
}


@dataclass
class PlanPreview:
    """The plan of a study as far as it can be named, with what is done and what it will cost.

    Attributes:
        units: every unit the plan names, in the order they run.
        done: keys of the units the database already holds.
        seconds: estimated seconds of one unit, by kind.
        measured: the kinds whose estimate comes from units that ran (the rest are defaults).
        training_runs: the training runs the experiment asks for in all (some are named only
            once earlier units have run).
    """

    units: list[UnitSpec]
    done: set[str]
    seconds: dict[str, float]
    measured: set[str] = field(default_factory=set)
    training_runs: int = 0

    @property
    def left(self) -> list[UnitSpec]:
        return [unit for unit in self.units if unit.key not in self.done]

    def cost(self, unit: UnitSpec) -> float:
        return 0.0 if unit.key in self.done else self.seconds.get(unit.kind, 600.0)

    def critical_path(self) -> list[UnitSpec]:
        """The costliest chain of units through `needs` (units already done cost nothing)."""
        by_key = {unit.key: unit for unit in self.units}
        finish: dict[str, tuple[float, str | None]] = {}  # key -> (cost up to and with it, the unit before)
        for unit in self.units:  # in run order: what a unit needs comes before it
            before = max((finish[k][0], k) for k in unit.needs if k in finish) if unit.needs else (0.0, None)
            finish[unit.key] = (before[0] + self.cost(unit), before[1])
        if not finish:
            return []
        key: str | None = max(finish, key=lambda k: finish[k][0])
        chain = []
        while key is not None:
            chain.append(by_key[key])
            key = finish[key][1]
        return [unit for unit in reversed(chain) if unit.key not in self.done]


def preview_plan(experiment: Experiment, data: StudyData, store: Store | None) -> PlanPreview:
    """The plan replayed against `store` (None: nothing has run)."""
    known = Known()
    while store is not None:
        current = make_plan(experiment, data, known)
        stored = [(unit, store.run(unit.key)) for unit in current.units if unit.key not in known.results]
        found = [(unit, row["result"]) for unit, row in stored if row and row["status"] == "done"]
        if not found:
            break
        for unit, result in found:
            learn(known, store, data, unit, result)
    units = make_plan(experiment, data, known).units
    measured = store.unit_seconds() if store is not None else {}
    seconds = {**DEFAULT_SECONDS, **{kind: statistics.median(values) for kind, values in measured.items()}}
    return PlanPreview(units, set(known.results), seconds, set(measured), training_runs(experiment))


def training_runs(experiment: Experiment) -> int:
    """Students x fine-tuning methods x objectives x seeds."""
    return sum(
        len(experiment.methods_of(s).finetune) * len(experiment.methods_of(s).objectives) * len(experiment.seeds_of(s))
        for s in experiment.students
    )


@dataclass
class StudySize:
    """How much a study will do, in numbers a typo shows in (`run --check` prints them).

    Attributes:
        training_runs: student x method x objective x seed.
        training_examples: training questions seen over every run: questions x epochs, or
            steps x batch size x accumulation where steps are set.
        generated_tokens: at most what the teachers planned to write rationales here generate
            (questions x max_new_tokens).
        per_run: (student, questions seen by one of its runs), a line each.
        student_tokens: at most what the students write themselves while they train (on-policy
            KD: training examples x onpolicy_lambda x onpolicy_max_new_tokens).
    """

    training_runs: int
    training_examples: int
    generated_tokens: int
    per_run: list[tuple[str, str]]
    student_tokens: int = 0

    def lines(self) -> list[str]:
        runs = "; ".join(f"{name}: {each}" for name, each in self.per_run)
        tokens = self.generated_tokens
        found = [
            f"training: {self.training_runs} run(s), {self.training_examples:,} training examples in all ({runs})",
            f"teachers generate at most {tokens:,} tokens of rationales" if tokens else "no teacher generates here",
        ]
        if self.student_tokens:
            found.append(
                f"students write at most {self.student_tokens:,} tokens of their own while training (onpolicy_kd)"
            )
        return found


def study_size(experiment: Experiment, data: StudyData, units: list[UnitSpec]) -> StudySize:
    """The size of `experiment`: its training runs from the config, its generation from the
    `teach` units planned (`units`)."""
    from tinystudent.distill.config import TrainConfig
    from tinystudent.distill.objective_spec import parse_objective
    from tinystudent.experiments.stages.teachers import teacher_of, teaching_examples

    questions = len(data.splits.train)
    runs = examples = student_tokens = 0
    per_run = []
    for student in experiment.students:
        methods = experiment.methods_of(student)
        for method in methods.finetune:
            changes = {**experiment.training.as_written(), **student.training.as_written(), "method": method}
            config = TrainConfig(**changes)
            if config.steps:
                batch = config.batch_size * config.grad_accum
                each, how = config.steps * batch, f"{config.steps:,} steps x {batch} questions"
            else:
                each, how = round(questions * config.epochs), f"{questions:,} questions x {config.epochs:g} epochs"
            seeds = len(experiment.seeds_of(student))
            count = len(methods.objectives) * seeds
            runs, examples = runs + count, examples + count * each
            onpolicy = sum(parse_objective(o).term == "onpolicy_kd" for o in methods.objectives) * seeds
            student_tokens += round(onpolicy * each * config.onpolicy_lambda * config.onpolicy_max_new_tokens)
            per_run.append((f"{student.name} ({method})", f"{count} run(s) of {how}"))
    tokens = 0
    for unit in units:
        if unit.kind == "teach":
            teacher = teacher_of(experiment, unit.args)
            tokens += len(teaching_examples(data, teacher.teach_limit)) * teacher.max_new_tokens
    return StudySize(runs, examples, tokens, per_run, student_tokens)


def describe(preview: PlanPreview, experiment: Experiment) -> list[str]:
    """The preview as lines of text: counts per kind (with what each unit asks its executor for),
    the critical path, the estimated hours."""
    by_kind: dict[str, list[UnitSpec]] = {}
    for unit in preview.units:
        by_kind.setdefault(unit.kind, []).append(unit)
    hours = "GPU-hours" if experiment.device.startswith("cuda") else "device-hours (GPU-hours on a GPU)"
    lines = [
        f"executor: {experiment.executor.kind}",
        f"{'unit kind':<14}{'planned':>8}{'done':>6}{'left':>6}{'each':>10}  {'estimate':<10}asks for",
    ]
    for kind, planned in by_kind.items():
        done = sum(unit.key in preview.done for unit in planned)
        source = "measured" if kind in preview.measured else "default"
        each = _duration(preview.seconds.get(kind, 600.0))
        asks = asked_for(planned[0], experiment)
        lines.append(f"{kind:<14}{len(planned):>8}{done:>6}{len(planned) - done:>6}{each:>10}  {source:<10}{asks}")
    left = preview.left
    total = sum(preview.cost(unit) for unit in left)
    path = preview.critical_path()
    trained = len(by_kind.get("train", []))
    lines += [
        f"{len(left)} of {len(preview.units)} units left: about {total / 3600:.2f} {hours} one after another",
        f"critical path ({len(path)} units, {_duration(sum(preview.cost(u) for u in path))}): "
        + (" -> ".join(unit.name for unit in path) or "nothing left"),
    ]
    if trained < preview.training_runs:
        lines.append(
            f"{preview.training_runs - trained} more training run(s) and the units after them are named once "
            "the units they depend on have run (a student's kind, a teacher's best mode, the search)"
        )
    return lines


def asked_for(unit: UnitSpec, experiment: Experiment) -> str:
    """What a unit asks its executor for, in words."""
    from tinystudent.experiments.executors.resources import IN_DRIVER, unit_resources

    if unit.kind in IN_DRIVER:
        return "runs in the driver"
    resources = unit_resources(unit, experiment)
    memory = f", {resources.memory_gb:g} GB" if resources.memory_gb is not None else ""
    return f"{resources.cpus} CPU, {resources.gpus} GPU{memory}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
