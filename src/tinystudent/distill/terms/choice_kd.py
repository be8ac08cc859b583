"""`choice_kd:<teacher>`: KL from a teacher's distribution over the choices to the student's
(Hinton et al. 2015, applied to the choices), softened by `temperature`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.distill.terms.base import CHOICE_LOGPROBS, BatchNeeds, Term, TermContext

if TYPE_CHECKING:
    from tinystudent.models.kinds import ModelKind


class ChoiceKD(Term):
    name = "choice_kd"
    summary = "KL from each teacher's distribution over the choices (stored choice log-probabilities)"
    per_teacher = True
    names_teacher = True
    teacher_data = CHOICE_LOGPROBS
    in_experiments = True

    def needs(self, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
        return BatchNeeds(choices=True, teacher_choice=True)

    def add_loss(self, context: TermContext) -> None:
        from tinystudent.distill.losses import choice_kd_loss

        scores, weights = context.scores, context.weights.per_teacher(self.name)
        if scores is None:
            return
        temperature = context.objectives.temperature
        for teacher, (table, present) in context.batch.teacher_choice.items():
            if present.any():
                term = choice_kd_loss(scores[present], table[present], temperature).mean()
                context.add(f"choice_kd:{teacher}", term, weights.get(teacher, 0.0))


TERM = ChoiceKD()
