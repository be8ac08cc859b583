"""The experiment config: one YAML names the whole study, validated before anything runs.

Unknown keys are errors, with the path of the key. `load_experiment` also checks the things a
schema cannot: files that must exist, objectives that name a known teacher, combinations that
cannot work (token-level logit distillation across vocabularies).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tinystudent.distill.config import RecoveryConfig, Seed, TrainConfig
from tinystudent.distill.objective_spec import ObjectiveSpec, parse_experiment_objective
from tinystudent.distill.terms import RATIONALES, TEACHER_MODELS, term
from tinystudent.experiments.training_changes import TrainingChanges

FINETUNE_METHODS = ("full", "lora")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _safe_name(name: str) -> str:
    """Experiment, teacher and student names become folder and file names: letters, digits and
    `._-` only, starting with a letter or digit, so no name can reach outside the results folder."""
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(at most 100, starting with a letter or digit, no '..'); names become folder names"
        )
    return name


SafeName = Annotated[str, AfterValidator(_safe_name)]


class TaskSpec(Strict):
    """Which benchmark and how much of each split to use (None = all of it).

    `max_input_tokens` fits every model's inputs, teachers' and students', in evaluation,
    training and teaching, to that many tokens by shortening the evidence (never the question),
    so all are judged on the same text; None: each model's own limit when it is evaluated or
    teaches, and the training config's `max_input_tokens` when it learns. `evidence` says how:
    `cut` its end, or `select` the sentences most related to the question (`evaluation.fit`).
    A training or validation question that is a test question is an error, or with
    `contamination: drop` is left out, the study saying which (`tasks.contamination`).
    """

    name: str
    train_limit: int | None = Field(None, ge=1)
    valid_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)
    test_split: str = "test"
    seed: Seed = 0
    max_input_tokens: int | None = Field(None, ge=8)
    evidence: Literal["cut", "select"] = "cut"
    contamination: Literal["error", "drop"] = "error"  # training or validation questions that are test ones

    def payload(self) -> dict:
        """What every unit of the study depends on of the task; the evidence strategy and the
        contamination rule only when they are not the default, so keys stored before they existed
        stay the same."""
        defaults = {"evidence": "cut", "contamination": "error"}
        return self.model_dump(exclude={key for key, value in defaults.items() if getattr(self, key) == value})

    @field_validator("test_split")
    @classmethod
    def _known_split(cls, split: str) -> str:
        from tinystudent.tasks.schema import SPLITS

        if split not in SPLITS:
            raise ValueError(f"test_split {split!r}: use one of {list(SPLITS)}")
        return split


class ImportSpec(Strict):
    """Rationales written elsewhere: TinyLLM's files, a generic JSONL {id, teacher, rationale}, the
    ones shipped with tinystudent for the `bioasq` task (`bundled`: TinyLLM's, no path), or the
    task's own worked solutions (`gold`: GSM8K's, no path)."""

    format: Literal["tinyllm", "jsonl", "bundled", "gold"]
    path: str | None = None
    teacher: str | None = None  # the teacher's name inside the files (TinyLLM: flan-t5-xl, llama-2-chat-7b)

    @model_validator(mode="after")
    def _path_when_needed(self):
        if self.format not in ("bundled", "gold") and not self.path:
            raise ValueError(f"rationales of format {self.format} need a `path`")
        if self.format in ("bundled", "gold") and self.path:
            raise ValueError(f"{self.format} rationales come with tinystudent or the task: give no `path`")
        return self

    @property
    def location(self) -> Path:
        """The file or folder the rationales are read from (bundled ones have none)."""
        if self.path is None:
            raise ValueError(f"{self.format} rationales have no path")
        return Path(self.path)


@dataclass(frozen=True)
class ScoringPass:
    """One way to run a model on a split: zero-shot or k-shot choice scoring, or generation (with
    k solved examples first, and for self-consistency several sampled answers voted on)."""

    name: str  # as written in eval_modes: zero_shot, fewshot:K, generate, generate_cot[:K], self_consistency:N[:K]
    mode: str  # evaluation mode: loglikelihood, generate, generate_cot, self_consistency
    num_fewshot: int = 0
    samples: int = 1  # self_consistency: answers sampled per question

    @property
    def metrics(self) -> tuple[str, ...]:
        """What one run of this pass measures: choice scoring gives acc and acc_norm."""
        return ("acc", "acc_norm") if self.mode == "loglikelihood" else ("acc",)

    def label(self, metric: str) -> str:
        """How the report names a pass and metric: "zero-shot acc_norm", "2-shot acc", "generative"."""
        shots = f"{self.num_fewshot}-shot" if self.num_fewshot else "zero-shot"
        if self.mode == "self_consistency":
            return f"{shots} self-consistency, {self.samples} samples"
        if self.mode != "loglikelihood":
            written = "generative" if self.mode == "generate" else "generative, step by step"
            return f"{shots} {written}" if self.num_fewshot else written
        return f"{shots} {metric}"


def _count(text: str, least: int) -> int | None:
    return int(text) if text.isdigit() and int(text) >= least else None


def parse_scoring_pass(text: str) -> ScoringPass:
    """`zero_shot`, `fewshot:K`, `generate`, `generate_cot`, `generate_cot:K` (K solved examples
    first; for gsm8k lm-eval's exemplars) or `self_consistency:N` / `self_consistency:N:K` (N
    sampled chains of thought, voted on; free-form tasks)."""
    head, *counts = text.split(":")
    numbers = [n for n in (_count(c, 1) for c in counts) if n is not None]
    if len(numbers) == len(counts):
        if head == "zero_shot" and not numbers:
            return ScoringPass(text, "loglikelihood")
        if head == "fewshot" and len(numbers) == 1:
            return ScoringPass(text, "loglikelihood", numbers[0])
        if head == "generate" and not numbers:
            return ScoringPass(text, head)
        if head == "generate_cot" and len(numbers) <= 1:
            return ScoringPass(text, head, numbers[0] if numbers else 0)
        if head == "self_consistency" and len(numbers) in (1, 2):
            return ScoringPass(text, head, numbers[1] if len(numbers) == 2 else 0, numbers[0])
    raise ValueError(
        f"unknown scoring {text!r}: use zero_shot, fewshot:K, generate, generate_cot, generate_cot:K or "
        "self_consistency:N[:K] (K, N >= 1)"
    )


class TeacherSpec(Strict):
    """A teacher: a local model, an OpenAI-compatible server, or outputs imported from files.

    `eval_modes` are the ways it is scored. Each one's accuracy (and acc_norm for choice scoring)
    is measured on the validation split, and the teacher is compared with the students on test in
    the best of them: every teacher gets its best fair shot, chosen without seeing the test split.
    """

    name: SafeName
    backend: Literal["local", "http", "imported"] = "local"
    model: str | None = None
    base_url: str | list[str] | None = None  # a list: servers of one model sharing the requests
    api_key_env: str | None = None
    strategy: str = "teacher_forcing_cot"
    k_shots: int = Field(2, ge=0)
    max_new_tokens: int = Field(128, ge=1)
    eval_modes: list[str] = ["zero_shot"]
    max_input_tokens: int | None = Field(None, ge=8)  # this teacher's inputs; default: the task's
    evidence: Literal["cut", "select"] | None = None  # how its evidence is shortened; default: the task's
    teach_limit: int | None = Field(None, ge=1)  # rationales for the first N training questions
    choice_limit: int | None = Field(None, ge=1)  # yes/no (choice) probabilities for the first N
    batch_size: int = Field(16, ge=1)  # prompts per generation batch of a local teacher
    engine: Literal["transformers", "llamacpp"] = "transformers"  # llamacpp: a GGUF teacher's rationales
    rationales: ImportSpec | None = None
    reported_acc: float | None = Field(None, ge=0, le=1)
    reported_source: str | None = None

    @field_validator("eval_modes")
    @classmethod
    def _known_modes(cls, modes: list[str]) -> list[str]:
        if not modes:
            raise ValueError("eval_modes needs at least one way to score the teacher")
        for mode in modes:
            parse_scoring_pass(mode)
        return modes

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, strategy: str) -> str:
        from tinystudent.teachers.prompts import STRATEGIES

        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}: use one of {sorted(STRATEGIES)}")
        return strategy

    @model_validator(mode="after")
    def _backend_needs(self):
        if self.backend in ("local", "http") and not self.model:
            raise ValueError(f"teacher {self.name!r}: backend {self.backend} needs `model`")
        if self.backend == "http" and not self.base_url:
            raise ValueError(f"teacher {self.name!r}: backend http needs `base_url` (one URL or a list)")
        if isinstance(self.base_url, list) and len(set(self.base_url)) != len(self.base_url):
            raise ValueError(f"teacher {self.name!r}: `base_url` lists a server twice")
        if self.backend == "imported":
            if self.rationales is None and self.reported_acc is None:
                raise ValueError(
                    f"teacher {self.name!r}: backend imported needs `rationales` "
                    "(its outputs) or `reported_acc` (its published accuracy), or both"
                )
            if self.reported_acc is not None and not self.reported_source:
                raise ValueError(f"teacher {self.name!r}: a reported_acc needs its reported_source")
        return self

    @property
    def measured(self) -> bool:
        return self.backend != "imported"

    @property
    def model_id(self) -> str:
        """The model a local or server teacher runs (validation made sure it names one)."""
        if self.model is None:
            raise ValueError(f"teacher {self.name!r}: an imported teacher runs no model")
        return self.model

    @property
    def writes_rationales(self) -> bool:
        """Imported with its rationales, or generating them (a CoT strategy)."""
        from tinystudent.teachers.prompts import STRATEGIES

        if self.backend == "imported":
            return self.rationales is not None
        return STRATEGIES[self.strategy].writes_rationale


class StudentSpec(Strict):
    """A student: a pretrained model, optionally scaled down to a subset of its layers
    (`keep_layers`) or to narrower feed-forward blocks (`mlp_width`), or both.

    `recover` (a cut causal student) first distils the model it was cut from into it on the
    task's text (`distill.recover`), before it learns the task. `methods` replaces the
    experiment's methods for this student (an encoder learns from no teacher's logits, say), and
    `training` changes its training settings (a large student may take fewer steps), and `seeds`
    replaces the experiment's seeds (a small, fast student may be trained with more).
    """

    name: SafeName
    model: str
    keep_layers: str | list[int] | None = None  # "every:3", "first:4" or explicit indices
    mlp_width: float | None = Field(None, gt=0, lt=1)  # fraction of each feed-forward block kept
    kind: str | None = None  # a registered model kind (models/kinds); None: read from the model's config
    recover: RecoveryConfig | None = None
    methods: MethodSpec | None = None
    seeds: list[Seed] | None = Field(None, min_length=1)  # this student's training seeds; default: the experiment's
    training: TrainingChanges = Field(default_factory=TrainingChanges)  # this student's changes (steps, lr, ...)

    @field_validator("kind")
    @classmethod
    def _a_known_kind(cls, kind):
        from tinystudent.models.kinds import known_kinds

        if kind is not None and kind not in known_kinds():
            raise ValueError(f"must be one of {', '.join(known_kinds())}, got {kind!r}")
        return kind

    @field_validator("keep_layers")
    @classmethod
    def _keep_is_well_formed(cls, keep):
        """The form is checked now; whether the model has that many layers, when it is cut."""
        from tinystudent.models.students import parse_keep

        if keep is not None:
            parse_keep(keep, 1_000_000)
        return keep

    @model_validator(mode="after")
    def _recover_needs_a_cut(self):
        if self.recover is not None and not self.is_cut:
            raise ValueError(
                f"student {self.name!r}: recover needs keep_layers or mlp_width (it repairs a "
                "cut model by distilling the model it was cut from)"
            )
        return self

    @property
    def is_cut(self) -> bool:
        """Scaled down from its model: fewer layers, narrower feed-forward blocks, or both."""
        return self.keep_layers is not None or self.mlp_width is not None

    @property
    def made_for_task(self) -> bool:
        """Of a kind made for one task's choices (a classifier): saved as that kind first."""
        from tinystudent.models.kinds import kind_adapter

        return self.kind is not None and kind_adapter(self.kind).made_for_task

    def payload(self, include: set[str] | None = None) -> dict:
        """What this student's cached units depend on (`methods` aside: each run names its own).
        Options left unset are left out, so adding an option keeps earlier results valid."""
        dumped = self.model_dump(include=include, exclude=None if include else {"methods", "seeds"})
        return {k: v for k, v in dumped.items() if not (k == "mlp_width" and v is None)}


class MethodSpec(Strict):
    """Fine-tuning methods crossed with objectives.

    Objectives (`distill.objective_spec`): `answer`; `rationale:<teacher>` (that teacher's
    rationales, one task per teacher); `rationale:all` (every teacher with rationales);
    `choice_kd:<teacher>` (KL to that teacher's distribution over the choices) or `choice_kd:all`;
    the token-level terms learnt from a teacher's model, a local teacher of the study:
    `logit_kd:<teacher>` (its next-token distributions on the gold answers: off-policy),
    `onpolicy_kd:<teacher>` (on answers the student writes itself, GKD: `training.onpolicy_lambda`)
    and `uld_kd:<teacher>` (across tokenizers); several teachers' models as one target with
    `logit_kd:A+B`, or `all` of the local ones.
    """

    finetune: list[Literal["full", "lora"]] = ["full"]
    objectives: list[str] = ["answer"]

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, objectives: list[str]) -> list[str]:
        for objective in objectives:
            parse_experiment_objective(objective)
        return objectives


StudentSpec.model_rebuild()


class CollaborationSpec(Strict):
    """Small models working together instead of learning from a teacher (see the collab package)."""

    members: list[str] = []  # student names: ensembles and mutual learning
    debate_members: list[str] | None = None  # who debates (they must write text); default: members
    mutual_learning: bool = False
    collaborative_teaching: bool = False  # each member learns from the others' rationales
    ensemble: bool = False
    debate_rounds: int = Field(0, ge=0)
    debate_limit: int | None = Field(None, ge=1)
    # free-form tasks: each member's best run also answers by self-consistency, this many sampled
    # chains of thought per question voted on
    self_consistency: int | None = Field(None, ge=2)
    training: TrainingChanges = Field(default_factory=TrainingChanges)  # mutual learning's changes


class SearchSpec(Strict):
    """Loss-guided search over the student ladder (smallest first, stop at the first winner).

    Candidates whose bits per byte is above `threshold`, or not below the best failed candidate's
    minus `margin` (when `fit_threshold`), are skipped. The search trains `method` x `objective`.
    """

    method: Literal["full", "lora"] = "full"
    objective: str = "answer"
    threshold: float | None = None
    fit_threshold: bool = True
    margin: float = Field(0.0, ge=0)
    alpha: float = Field(0.05, gt=0, lt=1)

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, objective: str) -> str:
        parse_experiment_objective(objective)
        return objective


UNIT_KINDS = (
    "teacher_eval",
    "teach",
    "import",
    "choice_scores",
    "cut",
    "recover",
    "student",
    "student_eval",
    "train",
    "debate",
    "ensemble",
    "mutual",
    "self_consistency",
)


class ResourceSpec(Strict):
    """What one unit asks its executor for. None: the executor's default (see
    `experiments.executors.resources`)."""

    cpus: int | None = Field(None, ge=1)
    gpus: int | None = Field(None, ge=0)
    memory_gb: float | None = Field(None, gt=0)


class RaySpec(Strict):
    """Where the Ray executor sends units: `address` of a running cluster (`auto`, or
    `ray://head:10001`), or None to start a local one with `num_cpus` (default: all) and `num_gpus`."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)


class SlurmSpec(Strict):
    """How the SLURM executor submits units through submitit.

    `folder` holds submitit's job files and logs (default: `<results folder>/slurm`); it and the
    results folder must be on a file system every node sees. `cluster`: `slurm`, `local` (the same
    jobs as local processes, for trying a config), or None to detect. `additional` passes sbatch
    options submitit has no name for (e.g. `{account: myproject, qos: high}`)."""

    folder: str | None = None
    cluster: Literal["slurm", "local"] | None = None
    partition: str | None = None
    time_minutes: int = Field(240, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    max_requeues: int = Field(3, ge=0)
    poll_seconds: float = Field(5.0, gt=0)
    additional: dict[str, str | int | float | bool] = {}


class ExecutorSpec(Strict):
    """Where the units of a study run (`tinystudent run --executor`).

    `local`: on this machine, `jobs` at a time (each in its own process when more than one).
    `ray`: as Ray tasks on a cluster (`ray`). `slurm`: as SLURM jobs through submitit (`slurm`).
    `resources` declares what each kind of unit needs (`default` for every kind not named)."""

    kind: Literal["local", "ray", "slurm"] = "local"
    jobs: int = Field(1, ge=1)
    ray: RaySpec = Field(default_factory=RaySpec)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    resources: dict[str, ResourceSpec] = {}

    @field_validator("resources")
    @classmethod
    def _known_kinds(cls, resources: dict[str, ResourceSpec]) -> dict[str, ResourceSpec]:
        unknown = sorted(set(resources) - {*UNIT_KINDS, "default"})
        if unknown:
            raise ValueError(f"executor.resources: {unknown} are not unit kinds ({', '.join(UNIT_KINDS)}, default)")
        return resources


class Experiment(Strict):
    name: SafeName
    task: TaskSpec
    teachers: list[TeacherSpec] = Field(min_length=1)
    students: list[StudentSpec] = Field(min_length=1)
    methods: MethodSpec = MethodSpec()
    seeds: list[Seed] = Field([0], min_length=1)  # each 0 to 2**32 - 1
    training: TrainingChanges = Field(default_factory=TrainingChanges)
    collaboration: CollaborationSpec | None = None
    search: SearchSpec | None = None
    measure_bits_per_byte: bool = True
    mlflow: bool | str = False  # true: a file store in the results folder; or a tracking URI
    eval_batch_size: int = Field(16, ge=1)
    device: str = "auto"
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)

    @model_validator(mode="after")
    def _names_line_up(self):
        teacher_names = [t.name for t in self.teachers]
        student_names = [s.name for s in self.students]
        for names, what in ((teacher_names, "teacher"), (student_names, "student")):
            duplicates = {n for n in names if names.count(n) > 1}
            if duplicates:
                raise ValueError(f"{what} names must be unique, repeated: {sorted(duplicates)}")
        for where, objective in self._objectives():
            self._check_teacher_of(where, objective)
        for teacher in self.teachers:
            if teacher.rationales and teacher.rationales.format == "bundled" and self.task.name != "bioasq":
                raise ValueError(
                    f"teacher {teacher.name!r}: bundled rationales belong to the task bioasq, not {self.task.name!r}"
                )
        if self.search and not self.measure_bits_per_byte:
            raise ValueError("search needs measure_bits_per_byte: true (it ranks students by bits per byte)")
        if self.collaboration:
            for key in ("members", "debate_members"):
                unknown = set(getattr(self.collaboration, key) or []) - set(student_names)
                if unknown:
                    raise ValueError(f"collaboration.{key}: {sorted(unknown)} are not students")
        return self

    def _objectives(self) -> list[tuple[str, str]]:
        """(where it is written, objective) for every objective the experiment trains."""
        written = [("methods.objectives", o) for o in self.methods.objectives]
        for student in self.students:
            if student.methods:
                written += [(f"students.{student.name}.methods.objectives", o) for o in student.methods.objectives]
        return written + ([("search.objective", self.search.objective)] if self.search else [])

    def check_free_form(self) -> None:
        """A free-form task (no choices) refuses what only choices make sense of: choice scoring
        of teachers, choice-level distillation, classifiers and encoders, and collaboration over
        choice distributions.

        Raises:
            ValueError: naming every such part of the study."""
        from tinystudent.models.kinds import kind_adapter  # torch: not at import (run --check, --help)

        found = []
        for teacher in self.teachers:
            if teacher.backend == "local":  # a server teacher is asked to think step by step
                found += [
                    f"teachers.{teacher.name}.eval_modes: {mode!r} scores choices"
                    for mode in teacher.eval_modes
                    if parse_scoring_pass(mode).mode == "loglikelihood"
                ]
        found += [
            f"{where}: {objective!r} learns a distribution over choices"
            for where, objective in self._objectives()
            if term(parse_experiment_objective(objective).term).needs(kind_adapter("causal"), "tokens").choices
        ]
        found += [
            f"students.{s.name}: kind {s.kind!r} writes no text"
            for s in self.students
            if s.kind in ("encoder", "classifier")
        ]
        if self.collaboration and (self.collaboration.ensemble or self.collaboration.mutual_learning):
            found.append("collaboration: ensembles and mutual learning combine distributions over choices")
        if self.collaboration and self.collaboration.debate_rounds:
            found.append("collaboration: debate argues over choices")
        if found:
            raise ValueError(
                f"task {self.task.name!r} is free-form (its answers are written, not chosen); these parts of the "
                "study need choices: " + "; ".join(found) + ". Free-form teachers are scored by generate, "
                "generate_cot[:K] or self_consistency:N[:K]"
            )

    def _check_teacher_of(self, where: str, objective: str) -> None:
        """The teacher an objective names exists and, for rationales, writes them; a token-level
        term's teachers (`logit_kd:A+B`) each run a local model (`check_teacher_models`)."""
        teacher_names = [t.name for t in self.teachers]
        spec = parse_experiment_objective(objective)
        if term(spec.term).teacher_data == TEACHER_MODELS:
            self.check_teacher_models(where, spec)
            return
        if spec.teacher is not None and spec.teacher not in (*teacher_names, "all"):
            raise ValueError(f"{where}: {objective!r} names no teacher; teachers are {teacher_names}")
        named = spec.teacher if spec.teacher is not None and not spec.every_teacher else None
        learns = term(spec.term).teacher_data
        if learns == RATIONALES and named is not None and not self.teacher(named).writes_rationales:
            raise ValueError(
                f"{where}: {objective!r}: teacher {spec.teacher!r} has no rationales "
                "(import them with `rationales`, or give it a cot strategy)"
            )

    def check_teacher_models(self, where: str, spec: ObjectiveSpec) -> None:
        """A token-level term (`logit_kd`, `onpolicy_kd`, `uld_kd`) learns from teachers' logits:
        each teacher it names must be one of the study's and run a local model, whose next-token
        distributions the training run computes. A server's API and imported outputs give none.

        Raises:
            ValueError: naming the objective, the teacher and what to do instead."""
        teacher_names = [t.name for t in self.teachers]
        if spec.every_teacher:
            if not any(t.backend == "local" for t in self.teachers):
                raise ValueError(
                    f"{where}: {str(spec)!r}: no teacher runs a local model, and {spec.term} learns from a "
                    f"teacher model's logits; add a teacher with `backend: local` and a `model:`"
                )
            return
        names = (spec.teacher or "").split("+")
        if "" in names or len(set(names)) != len(names):
            raise ValueError(
                f"{where}: {str(spec)!r}: name each teacher model once, several joined by '+' ({spec.term}:A+B)"
            )
        for name in names:
            if name not in teacher_names:
                raise ValueError(f"{where}: {str(spec)!r} names no teacher {name!r}; teachers are {teacher_names}")
            teacher = self.teacher(name)
            if teacher.backend != "local":
                how = (
                    "a server answers with text, not logits"
                    if teacher.backend == "http"
                    else "it is known only by its outputs"
                )
                raise ValueError(
                    f"{where}: {str(spec)!r}: teacher {name!r} is {teacher.backend} ({how}), but {spec.term} "
                    "learns from a teacher model's next-token logits, which only a local model gives. Add a "
                    f"teacher with `backend: local` and the same `model:` (a Hub id or folder) and name it in "
                    f"{spec.term}:<teacher>, or learn from {name!r} by rationale:{name} or choice_kd:{name}"
                )

    def teacher_models_of(self, spec: ObjectiveSpec) -> list[str]:
        """The teachers whose models a token-level objective learns from: those it names
        (`logit_kd:A+B`), or with `all` every teacher running a local model."""
        if spec.every_teacher:
            return [t.name for t in self.teachers if t.backend == "local"]
        return (spec.teacher or "").split("+") if spec.teacher else []

    def teacher(self, name: str) -> TeacherSpec:
        return next(t for t in self.teachers if t.name == name)

    def student(self, name: str) -> StudentSpec:
        return next(s for s in self.students if s.name == name)

    def objective(self, text: str) -> ObjectiveSpec:
        """An objective of this experiment, parsed (it was checked when the experiment was loaded)."""
        return parse_experiment_objective(text)

    def methods_of(self, student: StudentSpec) -> MethodSpec:
        """The fine-tuning methods and objectives this student is trained with."""
        return student.methods or self.methods

    def seeds_of(self, student: StudentSpec) -> list[int]:
        """The seeds this student is trained with (each recipe once per seed)."""
        return student.seeds or self.seeds


class ExperimentError(ValueError):
    """A config that cannot run, with the key's path."""


# Limits on a study file, far above any study (the largest shipped one: 4 kB, 6 levels, ~200
# values) and far below what would exhaust Python (its recursion limit; the memory of a few
# aliases expanded a billion times).
MAX_STUDY_BYTES = 1_000_000
MAX_STUDY_NESTING = 50  # levels of mappings and lists
MAX_STUDY_VALUES = 100_000  # values, every alias (*name) counted each time it is used


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a study file may not be (a key given twice, too deep, too many values)."""


class _StudyLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses what it would otherwise take silently or die of: a key
    given twice in one mapping (the later would replace the earlier unseen), nesting deeper than
    MAX_STUDY_NESTING (Python's recursion limit), and aliases expanding to more than
    MAX_STUDY_VALUES values. Each refusal is a `yaml.MarkedYAMLError` with its line."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_STUDY_NESTING:
                raise _Refused(
                    None,
                    None,
                    f"nested more than {MAX_STUDY_NESTING} levels deep (mappings and lists); a study is a few "
                    "levels deep, so this is probably not a study file",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _count_values(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                own = node.start_mark.index <= key_node.start_mark.index <= node.end_mark.index
                if not own or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merged in from an anchor (`<<: *base`): overriding those is the point
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: PyYAML's own error names it
                if first is not key_node.start_mark:
                    raise _Refused(
                        None,
                        None,
                        f"key {key!r} is given twice in one mapping, first at {_place(first)}; the second "
                        "would silently replace the first: keep one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _place(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _count_values(node, sizes: dict, open_nodes: set) -> int:
    """How many values `node` holds with every alias expanded; refuses more than MAX_STUDY_VALUES
    and an alias inside the very list or mapping it names (a structure that never ends)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _Refused(
            None, None, "an alias refers to a list or mapping it is inside of, so it never ends", node.start_mark
        )
    total = 1
    if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        open_nodes.add(id(node))
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        for child in children:
            total += _count_values(child, sizes, open_nodes)
            if total > MAX_STUDY_VALUES:
                raise _Refused(
                    None,
                    None,
                    f"more than {MAX_STUDY_VALUES:,} values once its aliases (*name) are expanded; "
                    "a study holds a few hundred",
                    node.start_mark,
                )
        open_nodes.discard(id(node))
    sizes[id(node)] = total
    return total


def yaml_problem(err: yaml.YAMLError, said: bool = False) -> str:
    """A YAML error on one line: where (line, column) and what, without PyYAML's snippet
    (`said`: the caller already says it is not valid YAML)."""
    mark = getattr(err, "problem_mark", None)
    if not isinstance(err, yaml.MarkedYAMLError) or mark is None:
        return " ".join(str(err).split())
    if isinstance(err, _Refused):
        return f"{_place(mark)}: {err.problem}"
    what = "; ".join(part for part in (err.context, err.problem) if part)
    return f"{_place(mark)}: {what}" if said else f"{_place(mark)}: not valid YAML ({what})"


def parse_yaml(text: str, source: str) -> Any:
    """YAML text as `_StudyLoader` reads it (no duplicate keys, bounded nesting and size).

    Raises:
        yaml.YAMLError: with the line of what is wrong (`source` names the text in it)."""
    loader = _StudyLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str = "experiment config") -> Any:
    """A YAML file the command line was given (a study, a training config): a regular file of at
    most MAX_STUDY_BYTES, read as `parse_yaml` reads it.

    Raises:
        ExperimentError: naming the file, and the line of a syntax error, a key given twice or
            nesting too deep."""
    if not path.exists():
        raise ExperimentError(f"{path}: no such {what.removesuffix(' config')} file")
    if not path.is_file():
        raise ExperimentError(f"{path}: is not a regular file; the {what} is a YAML file")
    size = path.stat().st_size
    if size > MAX_STUDY_BYTES:
        raise ExperimentError(
            f"{path}: {size:,} bytes; the {what} is a YAML file of at most {MAX_STUDY_BYTES:,} bytes "
            "(a study is a few kB): is this the right file?"
        )
    try:
        return parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as err:
        raise ExperimentError(f"{path}: byte {err.start}: not UTF-8 text; the {what} is a YAML file") from None
    except yaml.YAMLError as err:
        raise ExperimentError(f"{path}: {yaml_problem(err)}") from None


def _format_validation(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: the experiment config is not valid:"]
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        message = "unknown key (not allowed here)" if problem["type"] == "extra_forbidden" else problem["msg"]
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override (`key.sub=value`) and validate an experiment YAML; check files it names."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: the experiment must be a mapping with name, task, teachers, students")
    for override in overrides or []:
        _apply_override(raw, override)
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as err:
        raise ExperimentError(_format_validation(path, err)) from None
    try:
        _check_files(experiment, path.parent)
    except ExperimentError as err:
        raise ExperimentError(f"{path}: {err}") from None
    _check_training(experiment, path)
    _check_mlflow(experiment, path)
    return experiment


def _check_mlflow(experiment: Experiment, path: Path) -> None:
    from tinystudent.experiments.tracking import mlflow_available

    if experiment.mlflow and not mlflow_available():
        raise ExperimentError(
            f"{path}: mlflow: logging to MLflow was asked for, but mlflow is not "
            "installed; pip install mlflow-skinny (or mlflow), or set mlflow: false"
        )


def _check_training(experiment: Experiment, path: Path) -> None:
    """The `training` block, with each student's changes, must be a valid training config for
    every fine-tuning method (each block alone was checked key by key by `TrainingChanges`)."""
    training = experiment.training.as_written()
    collaboration = experiment.collaboration.training.as_written() if experiment.collaboration else {}
    try:
        TrainConfig(**{**training, **collaboration, "method": "full"})
    except ValidationError as err:
        raise ExperimentError(_format_validation(path, err).replace("\n  ", "\n  collaboration.training.")) from None
    for i, student in enumerate(experiment.students):
        changes = student.training.as_written()
        where = f"students.{i}.training." if changes else "training."
        for method in experiment.methods_of(student).finetune:
            try:
                TrainConfig(**{**training, **changes, "method": method})
            except ValidationError as err:
                raise ExperimentError(_format_validation(path, err).replace("\n  ", "\n  " + where)) from None


def _apply_override(raw: dict, override: str) -> None:
    if "=" not in override:
        raise ExperimentError(f"override {override!r}: expected key.path=value")
    key, value = override.split("=", 1)
    try:
        parsed = parse_yaml(value, f"override {key}")
    except yaml.YAMLError as err:
        shown = override if len(override) <= 80 else override[:77] + "..."
        if isinstance(err, _Refused):
            raise ExperimentError(f"override {shown!r}: the value, {yaml_problem(err)}") from None
        raise ExperimentError(
            f"override {shown!r}: the value is not valid YAML ({yaml_problem(err, said=True)})"
        ) from None
    node, parts = raw, key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ExperimentError(
                    f"override {override!r}: {where}: the list has {len(node)} item(s); "
                    f"use an index from 0 to {len(node) - 1}"
                )
            part = int(part)
        elif not isinstance(node, dict):
            raise ExperimentError(f"override {override!r}: {'.'.join(parts[:depth])} is a single value, it has no keys")
        if depth == len(parts) - 1:
            node[part] = parsed
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}
            node = node[part]


def _resolve(base: Path, value: str) -> str:
    """A path relative to the config's folder, else to the working folder (for shipped examples)."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    beside = base / candidate
    return str(beside if beside.exists() or not candidate.exists() else candidate.resolve())


def _local_model(base: Path, model: str, key: str) -> str:
    """A model folder beside the study (or the working folder) as its path; a Hub id as it is; a
    path-like name (`./`, `/`, `~`) that is not there is refused with its `key`."""
    local = Path(_resolve(base, model))
    if local.exists():
        return str(local)
    if model.startswith((".", "/", "~")):
        raise ExperimentError(f"{key}: {local} does not exist")
    return model


def _check_files(experiment: Experiment, base: Path) -> None:
    """Paths in the config are relative to the config file; each must exist."""
    for i, teacher in enumerate(experiment.teachers):
        if teacher.backend == "local" and teacher.model:  # a folder beside the study, as for students
            teacher.model = _local_model(base, teacher.model, f"teachers.{i}.model")
        if teacher.rationales and teacher.rationales.path:
            teacher.rationales.path = _resolve(base, teacher.rationales.path)
            if not Path(teacher.rationales.path).exists():
                raise ExperimentError(f"teachers.{i}.rationales.path: {teacher.rationales.path} does not exist")
    from tinystudent.tasks.catalog import TASKS

    name = experiment.task.name
    task_path = Path(_resolve(base, name))
    if task_path.exists():
        experiment.task.name = str(task_path)
    elif name not in TASKS and "/" not in name and not Path(name).suffix:
        raise ExperimentError(
            f"task.name: {name!r} is neither a known task ({', '.join(sorted(TASKS))}) nor an existing file or folder"
        )
    for i, student in enumerate(experiment.students):
        student.model = _local_model(base, student.model, f"students.{i}.model")
