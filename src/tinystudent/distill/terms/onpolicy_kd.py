"""`onpolicy_kd`: on-policy distillation, the token-level divergence from a frozen teacher on
answers the student writes itself (GKD: Agarwal et al. 2024, "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes"; MiniLLM: Gu et al. 2024, "MiniLLM: Knowledge
Distillation of Large Language Models").

Off-policy KD (`logit_kd`) teaches the student on sequences it does not write at test time, the
gold answers; once it writes, its own early mistakes lead it to prefixes it never learnt from. So
each training row is drawn, with probability `onpolicy_lambda` (GKD's lambda), to have its answer
replaced by a continuation the student samples from the row's answer prompt (in eval mode, without
gradients, through the package's one decoder, `models.generation.generate_rows`: batched, each row
stopping at its own end of text or token limit). The teacher is run on prompt + continuation like
on any token batch, and the student minimises the divergence (`logit_kd_divergence`: reverse KL as
in MiniLLM, the generalised JSD as in GKD) at every position of its continuation, in the shared
fused token pass, so no [tokens, vocabulary] logits are kept. Self-written tokens get no
cross-entropy: they are not targets, only the places where the teacher is asked. The other rows
keep their gold answer, its cross-entropy (the answer term) and this term's divergence on it
(GKD's mixture of fixed and on-policy sequences; lambda 0 is supervised KD on the gold answers).

As in GKD, no gradient flows through the sampling (MiniLLM's policy-gradient estimator is not
implemented). The log's `onpolicy_kd` is the mean divergence on the student's own tokens.

Its teachers are named as `logit_kd`'s are (`onpolicy_kd:A+B`, `weights.onpolicy_kd: {A: 1, B: 2}`;
one number: every teacher model given, usually the one): several are one target, their
next-token distributions mixed in probability space (`objectives.mixed_states`), on each token
batch with the shares of the terms that cover it (`teacher_models.kd_shares`). The teachers must
share the student's vocabulary, since they read the student's own tokens; a teacher of another
tokenizer is refused when it is loaded (`vocab.check_vocab`, which names `uld_kd`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.distill.terms.base import (
    STUDENT_SAMPLES,
    TEACHER_MODELS,
    BatchNeeds,
    Term,
    TermContext,
    TermWeights,
)

if TYPE_CHECKING:
    from tinystudent.models.kinds import ModelKind


class OnPolicyKD(Term):
    name = "onpolicy_kd"
    summary = "token-level KD on answers the student writes itself (GKD; --onpolicy-lambda, --teacher-model)"
    names_teacher = True
    per_teacher = True
    teacher_data = TEACHER_MODELS
    teacher_model = True
    in_experiments = True  # a study names a teacher of its own with a local model

    def needs(self, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
        return BatchNeeds(answer_tokens=True, teacher_states=True, student_samples=True)

    def kd_weight(self, weights: TermWeights) -> float:
        return weights.total(self.name)

    def kd_on(self, batch_name: str) -> bool:
        return batch_name in ("answer", STUDENT_SAMPLES)

    def add_loss(self, context: TermContext) -> None:
        found = context.passes.get(STUDENT_SAMPLES)
        if found is not None and found.kd is not None and found.kd.numel():
            context.parts[self.name] = found.kd.mean()


TERM = OnPolicyKD()


def sampled_rows(rows: int, share: float, seed: int, position: int) -> list[int]:
    """The rows of a micro-batch whose answer the student writes: each drawn with probability
    `share`, from a generator seeded by the run's seed and the batch's place in the sample stream,
    so a resumed run draws the same rows. Share 0 draws none, share 1 all."""
    import torch

    from tinystudent.models.generation import prompt_seed

    if not 0 <= share <= 1:
        raise ValueError(f"onpolicy_lambda is the share of rows the student writes, from 0 to 1; got {share}")
    generator = torch.Generator().manual_seed(prompt_seed(seed, f"onpolicy rows:{position}") % 2**63)
    drawn = torch.rand(rows, generator=generator) < share
    return [i for i in range(rows) if drawn[i]]


def student_continuations(
    model,
    tokenizer,
    kind: str | ModelKind,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    seeds: list[int],
    context: int | None = None,
) -> list[list[int]]:
    """What the student writes after each prompt, as target tokens: sampled at `temperature` (0:
    greedy) with one seed per row, in eval mode (no dropout) and without gradients, the model put
    back in its training mode after. A row that ended with the end of text keeps that token as
    its last target, so the teacher is asked where the student stops too.

    Args:
        context: the most tokens a decoder-only student takes; a row writes at most what is left
            of it after its prompt (at least one token). None: no limit but `max_new_tokens`.
    """
    from tinystudent.models.generation import RowParams, generate_rows
    from tinystudent.models.kinds import kind_adapter

    if len(seeds) != len(prompts):
        raise ValueError(f"one sampling seed per prompt: {len(seeds)} seeds for {len(prompts)} prompts")
    decoder_only = kind_adapter(kind).decoder_only
    rows = []
    for prompt, seed in zip(prompts, seeds):
        room = max(1, context - len(prompt)) if context is not None and decoder_only else max_new_tokens
        rows.append(RowParams(max_new_tokens=min(max_new_tokens, room), temperature=temperature, seed=seed))
    was_training = model.training
    model.eval()
    try:
        written = generate_rows(model, tokenizer, kind, prompts, rows)
    finally:
        model.train(was_training)
    eos = tokenizer.eos_token_id
    ended = [out.finish_reason == "stop" and eos is not None for out in written]
    return [list(out.token_ids) + ([eos] if end else []) for out, end in zip(written, ended)]
