"""`logit_kd`: token-level distillation from a frozen teacher model's next-token distribution on
the student's token batches (forward KL, reverse KL or generalised JSD: `logit_kd_divergence`).

`logit_kd:A+B` learns from several teacher models at once: their distributions are averaged in
probability space, each weighted by its weight (`weights.logit_kd.A`), and the term's weight is
the sum of theirs (`losses.mixture_logits`). The teachers must share the student's vocabulary;
`uld_kd` distils across tokenizers.

The divergence is computed in the shared token pass, fused with the cross-entropy of the same
rows, so the [tokens, vocabulary] logits exist for one chunk at a time; this term only logs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.distill.terms.base import TEACHER_MODELS, BatchNeeds, Term, TermContext, TermWeights

if TYPE_CHECKING:
    from tinystudent.models.kinds import ModelKind


class LogitKD(Term):
    name = "logit_kd"
    summary = "token-level KD from a teacher model's next-token distribution (--teacher-model)"
    names_teacher = True
    per_teacher = True
    teacher_data = TEACHER_MODELS
    teacher_model = True
    in_experiments = True  # a study names a teacher of its own with a local model

    def needs(self, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
        return BatchNeeds(answer_tokens=True, teacher_states=True)

    def kd_weight(self, weights: TermWeights) -> float:
        return weights.total(self.name)

    def add_loss(self, context: TermContext) -> None:
        import torch

        values = [p.kd for name, p in context.passes.items() if p.kd is not None and self.kd_on(name)]
        if values:
            context.parts[self.name] = torch.cat(values).mean()


TERM = LogitKD()
