"""`rationale:<teacher>`: learn each teacher's rationale (TinyLLM; distilling step by step).

A student that writes text learns the rationale's tokens after its rationale prompt (the shared
token pass computes the cross-entropy); one that cannot write (an encoder, a classifier) reads the
rationale after the question while it trains and learns the gold answer from that input (the
rationale is not there at test).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.distill.terms.base import RATIONALES, BatchNeeds, Term, TermContext

if TYPE_CHECKING:
    from tinystudent.models.kinds import ModelKind


class Rationale(Term):
    name = "rationale"
    summary = "each teacher's rationale: its tokens for a student that writes, extra input for one that reads"
    per_teacher = True
    names_teacher = True
    teacher_data = RATIONALES
    in_experiments = True

    def needs(self, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
        return BatchNeeds(rationales=True)

    def token_weight(self, context: TermContext, batch_name: str) -> float:
        term, _, teacher = batch_name.partition(":")
        return context.weights.per_teacher(self.name).get(teacher, 0.0) if term == self.name else 0.0

    def add_loss(self, context: TermContext) -> None:
        import torch.nn.functional as F

        weights = context.weights.per_teacher(self.name)
        for teacher, (choices, gold) in context.batch.rationale_inputs.items():
            term = F.cross_entropy(context.choice_scores(choices)[0], gold)
            context.add(f"rationale_input:{teacher}", term, weights.get(teacher, 0.0))


TERM = Rationale()
