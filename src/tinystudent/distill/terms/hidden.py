"""`hidden`: hidden-state matching between paired student and teacher layers (patient KD, Sun et
al. 2019) on the student's token batches, the teacher a frozen model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.distill.terms.base import BatchNeeds, Term, TermContext, TermWeights

if TYPE_CHECKING:
    from tinystudent.models.kinds import ModelKind


class Hidden(Term):
    name = "hidden"
    summary = "hidden-state matching with a teacher model's layers (patient KD, --teacher-model)"
    teacher_model = True

    def needs(self, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
        return BatchNeeds(answer_tokens=True, teacher_states=True)

    def wants_layers(self, weights: TermWeights) -> bool:
        return weights.scalar(self.name) > 0

    def add_loss(self, context: TermContext) -> None:
        import torch

        from tinystudent.distill.losses import hidden_state_loss

        terms = [
            hidden_state_loss(p.layers, p.teacher.layers)
            for p in context.passes.values()
            if p.layers and p.teacher is not None and p.teacher.layers
        ]
        if terms:
            context.add(self.name, torch.stack(terms).mean(), context.weights.scalar(self.name))


TERM = Hidden()
