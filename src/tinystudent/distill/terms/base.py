"""`Term`: one term of a student's objective, and what it reads and writes during a training step.

`StudentObjectives.forward` runs the passes every term shares once per batch (each token batch
through the student, its output layer fused with the cross-entropy and token-level KD weights the
terms ask of it; the choices' scores), then asks each active term, in the registry's order, to add
its loss to the `TermContext`. The objective is the sum of what the terms added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time a term module imports nothing heavy: `--help` lists the terms fast
    import torch

    from tinystudent.distill.objectives import StudentBatch, StudentObjectives, TeacherStates
    from tinystudent.models.batches import ChoiceBatch
    from tinystudent.models.kinds import ModelKind

# What a term learns from the teachers, loaded before training (`Term.teacher_data`).
RATIONALES = "rationales"
CHOICE_LOGPROBS = "choice_logprobs"
# Frozen teacher models by name (token-level terms learnt per teacher: `logit_kd:A+B`).
TEACHER_MODELS = "teacher_models"
DATA_WORDS = {
    RATIONALES: "rationales",
    CHOICE_LOGPROBS: "teacher choice log-probabilities",
    TEACHER_MODELS: "teacher models (--teacher-model NAME=PATH)",
}

# The token batch of the student's own continuations of its answer prompts (on-policy KD): not data,
# so no term puts a cross-entropy on it, and only the terms that ask for it (`Term.kd_on`) a divergence.
STUDENT_SAMPLES = "student_samples"


@dataclass(frozen=True)
class BatchNeeds:
    """What a training batch must carry for a term.

    Attributes:
        answer_tokens: the gold answer as (prompt, target) tokens (kinds with a next-token
            distribution).
        rationales: each weighted teacher's rationale: as target tokens for a student that writes
            text, as extra input before its answer for one that does not.
        choices: every choice of every question, for the student's distribution over them.
        teacher_choice: each weighted teacher's scores of the choices, beside `choices`.
        teacher_states: a frozen teacher model run on the token batches (token-level KD).
        teacher_tokens: each cross-tokenizer teacher's own tokenization of the token batches'
            texts, with the target rows aligned by position (ULD).
        student_samples: some rows' answers replaced by continuations the student writes itself
            from their prompts (`STUDENT_SAMPLES`, on-policy KD).
    """

    answer_tokens: bool = False
    rationales: bool = False
    choices: bool = False
    teacher_choice: bool = False
    teacher_states: bool = False
    teacher_tokens: bool = False
    student_samples: bool = False

    def __or__(self, other: BatchNeeds) -> BatchNeeds:
        return BatchNeeds(*(a or b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[bool, ...]:
        return (
            self.answer_tokens,
            self.rationales,
            self.choices,
            self.teacher_choice,
            self.teacher_states,
            self.teacher_tokens,
            self.student_samples,
        )


@dataclass
class TermWeights:
    """A run's resolved weights: term -> one weight, or teacher -> weight for the terms learnt per
    teacher (only the teachers with data, zero weights left out). A term absent or at 0 is off."""

    values: dict[str, float | dict[str, float]] = field(default_factory=lambda: {"answer": 1.0})

    def scalar(self, name: str) -> float:
        value = self.values.get(name, 0.0)
        return float(value) if not isinstance(value, dict) else 0.0

    def per_teacher(self, name: str) -> dict[str, float]:
        value = self.values.get(name, {})
        return dict(value) if isinstance(value, dict) else {}

    def total(self, name: str) -> float:
        """A term's whole weight: its one number, or the sum over its teachers (a per-teacher term
        given one number outside `ObjectiveWeights.resolve`, as recovery does: its one teacher)."""
        value = self.values.get(name, 0.0)
        return sum(value.values()) if isinstance(value, dict) else float(value)

    def active(self, name: str) -> bool:
        value = self.values.get(name, 0.0)
        return bool(value) if isinstance(value, dict) else value > 0


@dataclass
class TokenPass:
    """One token batch run through the student: target log-probabilities, token-level divergences
    from the teacher (where it ran), and hidden states at the matched layers."""

    logprobs: torch.Tensor
    kd: torch.Tensor | None
    layers: list[torch.Tensor]
    teacher: TeacherStates | None
    rows: torch.Tensor | None = None  # the student's rows at the target positions (its kind's token_rows)


@dataclass
class TermContext:
    """One batch's shared passes, and where the terms write their log values and losses."""

    objectives: StudentObjectives
    batch: StudentBatch
    weights: TermWeights
    choice_answer: bool  # the answer term reads the choices' scores, not answer tokens
    passes: dict[str, TokenPass] = field(default_factory=dict)
    scores: torch.Tensor | None = None  # [questions, max choices], differentiable
    gold_rows: torch.Tensor | None = None  # the gold continuations' token log-probabilities
    # Cross-tokenizer teachers' states on their own tokens: teacher -> token batch name -> states.
    own_tokens: dict[str, dict[str, TeacherStates]] = field(default_factory=dict)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: list[torch.Tensor] = field(default_factory=list)

    def add(self, log_name: str, value: torch.Tensor, weight: float) -> None:
        """Log `value` (detached) under `log_name` and add `weight * value` to the objective."""
        self.parts[log_name] = value.detach()
        self.losses.append(weight * value)

    def choice_scores(self, cb: ChoiceBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's scores of another choice batch (see `StudentObjectives`)."""
        return self.objectives.choice_scores(cb)


class Term:
    """One loss term. Subclass it once per term and set the attributes; override what it uses.

    Attributes:
        name: the term's name in objective strings, weights and logs (a plain word).
        summary: one line for `tinystudent train --help`.
        default_weight: its weight when a config does not give one (0: off).
        per_teacher: its weight is one number for every teacher or teacher -> number, and it is
            computed once per teacher that has data.
        names_teacher: an objective string may name a teacher after it (`rationale:flan-t5-xl`).
        teacher_data: what the run loads from the teachers for it (`RATIONALES`,
            `CHOICE_LOGPROBS`), the teacher models it is learnt from (`TEACHER_MODELS`), or None.
        teacher_model: it needs a frozen teacher model (token-level distillation).
        teacher_tokens: its teacher models read the texts in their own tokens (cross-tokenizer
            terms), so they need not share the student's vocabulary.
        in_experiments: the study runner trains it (`methods.objectives`).
        with_peers: it exists only in mutual learning (peers learning together).
    """

    name: str = ""
    summary: str = ""
    default_weight: float = 0.0
    per_teacher: bool = False
    names_teacher: bool = False
    teacher_data: str | None = None
    teacher_model: bool = False
    teacher_tokens: bool = False
    in_experiments: bool = False
    with_peers: bool = False

    def __repr__(self) -> str:
        return f"<objective term {self.name}>"

    # --- before training ----------------------------------------------------------------------

    def check_weight(self, value) -> None:
        """Refuse a configured weight of the wrong shape or sign (raise ValueError)."""
        values = value.values() if isinstance(value, dict) else [value]
        if isinstance(value, dict) and not self.per_teacher:
            raise ValueError(f"weights.{self.name} is one number (it learns from no teacher), got {value}")
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in values):
            raise ValueError(f"weights.{self.name} must be a number not below 0, got {value}")

    def check(self, weight: float | dict[str, float], teacher_model: bool) -> None:
        """Refuse a term that is configured on but whose inputs are missing, before any work.

        Args:
            weight: its resolved weight (per teacher: only the teachers with data; empty or 0
                when none has any).
            teacher_model: whether a frozen teacher model was given.
        """
        if self.teacher_model and not teacher_model:
            raise ValueError(f"weights.{self.name} > 0: token-level terms need a teacher model (--teacher-model)")
        if self.teacher_data is not None and not weight:
            raise ValueError(f"weights.{self.name} > 0 but no {DATA_WORDS[self.teacher_data]} were given")

    def needs(self, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
        """What a batch must carry for this term, for a student of this kind."""
        return BatchNeeds()

    # --- in a training step -------------------------------------------------------------------

    def token_weight(self, context: TermContext, batch_name: str) -> float:
        """Cross-entropy weight this term puts on token batch `batch_name` (`answer`,
        `rationale:<teacher>`), computed in the shared token pass."""
        return 0.0

    def kd_weight(self, weights: TermWeights) -> float:
        """Weight of the token-level divergence from the teacher, computed in the token pass."""
        return 0.0

    def kd_on(self, batch_name: str) -> bool:
        """Whether this term's divergence (`kd_weight`) covers token batch `batch_name`; its
        weight is spread over the target tokens of the batches it covers. By default the data's
        batches (answer, rationales), not the student's own samples."""
        return batch_name != STUDENT_SAMPLES

    def wants_layers(self, weights: TermWeights) -> bool:
        """Whether the token pass must keep hidden states at the matched layers."""
        return False

    def add_loss(self, context: TermContext) -> None:
        """Add this term's loss (`context.add`) from the shared passes and the batch."""
