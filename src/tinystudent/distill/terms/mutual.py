"""`mutual`: deep mutual learning (Zhang et al. 2018): KL from each peer's current, detached
distribution over the choices to the student's. Peers train together (`train_mutual`), so the
loop adds this term once every peer has scored the batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.distill.terms.base import BatchNeeds, Term

if TYPE_CHECKING:
    from tinystudent.models.kinds import ModelKind


class Mutual(Term):
    name = "mutual"
    summary = "KL towards the peers' distributions over the choices (mutual learning only)"
    default_weight = 1.0
    with_peers = True

    def needs(self, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
        return BatchNeeds(choices=True)


TERM = Mutual()
