"""`answer`: cross-entropy on the gold answer, in exactly the format evaluation scores.

A student with a next-token distribution learns the answer's tokens after its scoring prompt (the
shared token pass computes it), or, with `answer_loss: choices` or when the batch scores the
choices anyway, the gold choice among the choices' scores. An encoder learns from its choices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.distill.terms.base import BatchNeeds, Term, TermContext

if TYPE_CHECKING:
    from tinystudent.models.kinds import ModelKind


class Answer(Term):
    name = "answer"
    summary = "cross-entropy on the gold answer, in the format evaluation scores"
    default_weight = 1.0
    in_experiments = True

    def needs(self, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
        if adapter.next_token and answer_loss == "tokens":
            return BatchNeeds(answer_tokens=True)
        return BatchNeeds(choices=True)

    def token_weight(self, context: TermContext, batch_name: str) -> float:
        if batch_name == "answer" and not context.choice_answer:
            return context.weights.scalar(self.name)
        return 0.0

    def add_loss(self, context: TermContext) -> None:
        import torch.nn.functional as F

        weight, scores = context.weights.scalar(self.name), context.scores
        if not context.choice_answer or scores is None or weight <= 0:
            return
        if context.gold_rows is None or context.objectives.answer_loss == "choices":
            answer = F.cross_entropy(scores, context.batch.gold)
        else:  # the gold continuations' tokens, read off the choices' pass
            answer = -context.gold_rows.mean()
        context.add(self.name, answer, weight)


TERM = Answer()
