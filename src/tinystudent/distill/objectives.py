"""The student's side of every objective, as one module whose forward returns the loss terms.

Everything a training step computes with the student's weights happens in `StudentObjectives.
forward`, so the module can be wrapped by DDP (`accelerate launch`) as a whole and gradients are
synchronised however many terms a run combines. It returns the weighted objective, the sum over
the active terms of `distill.terms` (`L = w_answer L_answer + sum_m w_m L_rationale_m + sum_m c_m
L_choice_m + w_logit L_logit + w_hidden L_hidden + ...`), and each term's value for the log; only
mutual learning's term, which needs the peers, is added by the loop.

The model's kind (`models.kinds`) runs the kind-specific forward: the rows at target positions
(`ModelKind.token_rows`), what turns them into logits (`output_head`) and the scores of the
choices (`choice_scores`). Causal students never materialise [batch, tokens, vocabulary] logits:
the body returns hidden states and the output layer runs on target positions only, a chunk at a
time, its gradient computed in forward (`fused.fused_head_loss`), or, for output layers that
cannot be fused, under activation checkpointing (`losses.chunked_token_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from tinystudent.distill.fused import fused_head_loss
from tinystudent.distill.losses import chunked_token_losses, mixture_logits
from tinystudent.distill.sparse_kd import SparseTeacher, sparse_head_loss
from tinystudent.distill.terms import TermContext, TermWeights, terms
from tinystudent.distill.terms.base import STUDENT_SAMPLES, TokenPass
from tinystudent.models.batches import ChoiceBatch, TokenBatch
from tinystudent.models.heads import unwrap_peft
from tinystudent.models.kinds import ModelKind, kind_adapter


@dataclass
class TeacherStates:
    """A teacher's view of one token batch, at the student's target positions.

    `rows` are what its kind's `token_rows` gives (final hidden states for causal models, logits
    for seq2seq ones) and `head` turns them into logits. `layers` are hidden states for patient KD.
    `sparse`: its stored top-k log-probabilities at the target rows instead (`stored_logits`).
    """

    rows: torch.Tensor | None
    head: Callable | None
    layers: list[torch.Tensor] = field(default_factory=list)
    linear: torch.nn.Linear | None = None  # the teacher's plain output layer, when it has one
    sparse: SparseTeacher | None = None

    @property
    def has_logits(self) -> bool:
        """Whether token-level KD has the teacher's distribution here (live or stored)."""
        return self.rows is not None or self.sparse is not None


@dataclass
class TeacherTokens:
    """One token batch in a teacher's own tokens (cross-tokenizer KD), and which target rows of
    the student's batch and of this one hold the same target position (`data.align_targets`)."""

    batch: TokenBatch
    student_rows: torch.Tensor  # [aligned] indices into the student's target rows
    teacher_rows: torch.Tensor  # [aligned] indices into this batch's target rows

    def to(self, device) -> TeacherTokens:
        return TeacherTokens(self.batch.to(device), self.student_rows.to(device), self.teacher_rows.to(device))


class MixedHead:
    """Several teachers' output layers as one: rows are the teachers' rows side by side, and the
    logits are `losses.mixture_logits` of theirs (their next-token distributions averaged in
    probability space at `temperature`), over the first `vocab` entries every model has."""

    def __init__(self, heads: list[Callable], widths: list[int], proportions: list[float], temperature: float, vocab):
        self.heads, self.widths, self.proportions = heads, widths, proportions
        self.temperature, self.vocab = temperature, vocab

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        parts = rows.split(self.widths, dim=-1)
        logits = [head(part).float()[:, : self.vocab] for head, part in zip(self.heads, parts)]
        return mixture_logits(logits, self.proportions, self.temperature)


def mixed_states(
    by_teacher: dict[str, dict[str, TeacherStates]], proportions: dict[str, float], temperature: float, vocab
) -> dict[str, TeacherStates]:
    """One teacher's states per token batch from several teachers' (same vocabulary): one teacher
    is itself; several become one `MixedHead` over their rows side by side (the fused output
    layer calls it chunk by chunk). `vocab`: logit entries all models share (None: all)."""
    if len(by_teacher) == 1:
        return next(iter(by_teacher.values()))
    names = list(by_teacher)
    total = sum(proportions[n] for n in names)
    found = {}
    for batch_name in by_teacher[names[0]]:
        states = [by_teacher[n][batch_name] for n in names]
        rows = [s.rows for s in states]
        if any(r is None for r in rows):
            found[batch_name] = TeacherStates(None, None)
            continue
        head = MixedHead(
            [s.head for s in states],  # type: ignore[misc]  # rows present: each has its head
            [r.shape[-1] for r in rows],  # type: ignore[union-attr]
            [proportions[n] / total for n in names],
            temperature,
            vocab,
        )
        found[batch_name] = TeacherStates(torch.cat(rows, dim=-1), head)  # type: ignore[arg-type]
    return found


@dataclass
class StudentBatch:
    """One micro-batch of questions, in the student's tokens."""

    gold: torch.Tensor
    answer: TokenBatch | None = None
    rationales: dict[str, TokenBatch] = field(default_factory=dict)
    choices: ChoiceBatch | None = None
    teacher_choice: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # Kinds without a next-token distribution: the questions again, each teacher's rationale in the
    # input (training only), and their gold answers.
    rationale_inputs: dict[str, tuple[ChoiceBatch, torch.Tensor]] = field(default_factory=dict)
    # Cross-tokenizer terms: teacher -> token batch name -> that batch in the teacher's tokens.
    teacher_tokens: dict[str, dict[str, TeacherTokens]] = field(default_factory=dict)
    # On-policy KD: the prompts of the rows not in `answer`, each followed by what the student wrote.
    samples: TokenBatch | None = None

    def to(self, device) -> StudentBatch:
        return StudentBatch(
            self.gold.to(device),
            self.answer.to(device) if self.answer else None,
            {k: v.to(device) for k, v in self.rationales.items()},
            self.choices.to(device) if self.choices else None,
            {k: (t.to(device), p.to(device)) for k, (t, p) in self.teacher_choice.items()},
            {k: (cb.to(device), gold.to(device)) for k, (cb, gold) in self.rationale_inputs.items()},
            {k: {name: tt.to(device) for name, tt in by_batch.items()} for k, by_batch in self.teacher_tokens.items()},
            self.samples.to(device) if self.samples else None,
        )

    def token_batches(self) -> dict[str, TokenBatch]:
        found = {"answer": self.answer} if self.answer is not None else {}
        found.update({f"rationale:{m}": tb for m, tb in self.rationales.items()})
        if self.samples is not None:
            found[STUDENT_SAMPLES] = self.samples
        return found

    @property
    def tokens(self) -> int:
        total = sum(tb.tokens for tb in self.token_batches().values())
        total += sum(cb.n_tokens for cb, _ in self.rationale_inputs.values())
        return total + (self.choices.n_tokens if self.choices is not None else 0)


class StudentObjectives(torch.nn.Module):
    """Computes one student's weighted objective on one batch, and each term for the log.

    Args:
        model: the student (a transformers model, or a PEFT model wrapping one).
        kind: `causal`, `seq2seq` or `encoder`, or its `ModelKind`.
        weights: the terms' weights.
        temperature: softening temperature of choice-level and token-level KD.
        divergence, jsd_beta: the token-level divergence (see `losses.token_divergence`).
        chunk_tokens: target tokens per chunk of the output layer.
        kd_vocab: logit rows compared with the teacher's (vocabulary alignment).
        hidden_layers: student hidden-state indices matched in patient KD (0 = embeddings).
        fuse_head: compute a plain output layer's gradients in forward (True); False always takes
            the checkpointed per-token path (kept for comparison).
        answer_loss: `tokens` (cross-entropy on the gold answer's tokens) or `choices`
            (cross-entropy of the gold choice over the choices' scores; needs choice batches).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        kind: str | ModelKind,
        *,
        weights: TermWeights | None = None,
        temperature: float = 2.0,
        divergence: str = "forward_kl",
        jsd_beta: float = 0.5,
        chunk_tokens: int = 256,
        kd_vocab: int | None = None,
        hidden_layers: list[int] | None = None,
        fuse_head: bool = True,
        answer_loss: str = "tokens",
    ):
        super().__init__()
        self.answer_loss = answer_loss
        self.fuse_head = fuse_head
        self.model = model
        self.adapter = kind_adapter(kind)
        self.weights = weights or TermWeights()
        self.terms = [term for term in terms() if not term.with_peers and self.weights.active(term.name)]
        self.temperature, self.divergence, self.jsd_beta = temperature, divergence, jsd_beta
        self.chunk_tokens, self.kd_vocab = chunk_tokens, kd_vocab
        self.hidden_layers = hidden_layers or []

    @property
    def core(self) -> torch.nn.Module:
        return unwrap_peft(self.model)

    # --- token-level passes ---------------------------------------------------------------

    def _kd_args(self) -> dict:
        return dict(
            kd_vocab=self.kd_vocab,
            divergence=self.divergence,
            temperature=self.temperature,
            beta=self.jsd_beta,
            chunk_tokens=self.chunk_tokens,
        )

    def _token_pass(
        self, tb: TokenBatch, states: TeacherStates | None, ce_weight: float, kd_scale: float, want_layers: bool
    ):
        """(weighted loss, target log-probabilities, divergences, hidden states, the student's target
        rows) of a token batch."""
        core = self.core
        teacher_rows = states.rows if states is not None else None
        rows, targets, layers = self.adapter.token_rows(core, tb, self.hidden_layers if want_layers else [])
        ce_scale = ce_weight / max(rows.shape[0], 1)
        head = self.adapter.linear_head(core) if self.fuse_head else None
        if states is not None and states.sparse is not None:  # stored top-k teacher logits
            student_head = self.adapter.output_head(core)
            loss, logprobs, kd = sparse_head_loss(
                rows,
                targets,
                states.sparse,
                head=student_head,
                linear=head,
                ce_scale=ce_scale,
                kd_scale=kd_scale,
                **self._kd_args(),
            )
            return loss, logprobs, kd, layers, rows
        teacher_linear: Callable | None = states.linear if states is not None else None
        if states is not None and isinstance(states.head, MixedHead):  # made of heads that need no gradient
            teacher_linear = states.head
        if head is not None and torch.is_grad_enabled() and (teacher_rows is None or teacher_linear is not None):
            loss, logprobs, kd = fused_head_loss(
                rows,
                head,
                targets,
                ce_scale=ce_scale,
                teacher_hidden=teacher_rows,
                teacher_head=teacher_linear,
                kd_scale=kd_scale,
                **self._kd_args(),
            )
            return loss, logprobs, kd, layers, rows
        student_head = self.adapter.output_head(core)
        teacher_head = states.head if states is not None and teacher_rows is not None else None
        logprobs, kd = chunked_token_losses(
            rows, targets, student_head, teacher_hidden=teacher_rows, teacher_head=teacher_head, **self._kd_args()
        )
        loss = -ce_scale * logprobs.sum() + kd_scale * kd.sum()
        return loss, logprobs, kd, layers, rows

    def choice_scores(self, cb: ChoiceBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[questions, max choices] student scores (PAD_SCORE on padding) and the gold
        continuations' token log-probabilities (kinds with a next-token distribution)."""
        return self.adapter.choice_scores(self.core, cb, self.chunk_tokens)

    # --- all terms ------------------------------------------------------------------------

    def forward(
        self,
        batch: StudentBatch,
        teacher: dict[str, TeacherStates] | None = None,
        want_hidden: bool = False,
        own_tokens: dict[str, dict[str, TeacherStates]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """`loss` (the weighted objective), each term's value (detached, means over tokens or
        questions) and, when choices were scored, `choice_scores` (differentiable).

        `teacher` holds the teacher's states on the student's token batches, by batch name;
        `own_tokens` each cross-tokenizer teacher's on its own tokens (`batch.teacher_tokens`).

        The passes the terms share run once: every token batch through the student (its output
        layer fused with the cross-entropy weight the terms put on it and the token-level KD), the
        choices' scores; then each active term adds its loss (`terms.Term.add_loss`).
        """
        teacher = teacher or {}
        batches = batch.token_batches()
        # The answer term comes from the choices' scores when asked, or when no answer tokens ran.
        choice_answer = batch.choices is not None and (self.answer_loss == "choices" or "answer" not in batches)
        context = TermContext(self, batch, self.weights, choice_answer, own_tokens=own_tokens or {})
        self._token_passes(context, batches, teacher, want_hidden)
        if batch.choices is not None:
            context.scores, context.gold_rows = self.choice_scores(batch.choices)
            context.parts["choice_scores"] = context.scores
        for term in self.terms:
            term.add_loss(context)
        losses = context.losses
        if not losses:  # nothing to learn from in this batch: a zero that still reaches every weight
            zero = sum(p.reshape(-1)[0] for p in self.parameters() if p.requires_grad) * 0.0
            if not isinstance(zero, torch.Tensor):
                raise ValueError("the student has no trainable parameters")
            losses = [zero]
        context.parts["loss"] = torch.stack([t.float() for t in losses]).sum()
        return context.parts

    def _token_passes(
        self, context: TermContext, batches: dict[str, TokenBatch], teacher: dict[str, TeacherStates], want_hidden: bool
    ) -> None:
        """Each token batch through the student once, weighted as the terms ask (`token_weight`,
        `kd_weight`); its loss joins the objective and its rows are kept for the terms. The
        student's own samples carry no cross-entropy and no hidden-state matching: only the
        divergences of the terms that cover them (`kd_on`)."""
        kd_scales = self._kd_scales(batches, teacher)
        for name, tb in batches.items():
            states = teacher.get(name)
            ce_weight = sum(term.token_weight(context, name) for term in self.terms)
            own = name == STUDENT_SAMPLES
            loss, logprobs, kd, layers, rows = self._token_pass(
                tb, states, 0.0 if own else ce_weight, kd_scales[name], want_hidden and states is not None and not own
            )
            context.losses.append(loss)
            if logprobs.numel() and not own:
                as_choices = name == "answer" and context.choice_answer
                context.parts["answer_tokens" if as_choices else name] = -logprobs.detach().mean()
            teacher_ran = states is not None and states.has_logits
            context.passes[name] = TokenPass(logprobs, kd.detach() if teacher_ran else None, layers, states, rows)

    def _kd_scales(self, batches: dict[str, TokenBatch], teacher: dict[str, TeacherStates]) -> dict[str, float]:
        """Per token batch, the weight of each of its tokens' divergence: every term's `kd_weight`
        spread evenly over the target tokens of the batches it covers (`kd_on`) where the teacher
        ran (or its stored logits were read), so each term is a mean over its tokens."""
        ran = {name: tb.n_targets for name, tb in batches.items() if name in teacher and teacher[name].has_logits}
        scales = dict.fromkeys(batches, 0.0)
        for term in self.terms:
            weight = term.kd_weight(self.weights)
            covered = [name for name in ran if term.kd_on(name)]
            rows = sum(ran[name] for name in covered)
            for name in covered if weight and rows else []:
                scales[name] += weight / rows
        return scales


@torch.no_grad()
def teacher_states(
    core,
    kind: str | ModelKind,
    head: Callable | None,
    batch: StudentBatch,
    want_rows: bool,
    layers: list[int],
    batches: dict[str, TokenBatch] | None = None,
) -> dict[str, TeacherStates]:
    """Run the teacher (in eval mode, without gradients) on the student's token batches.

    Args:
        head: what turns the teacher's rows into logits; None: its kind's `output_head`.
        batches: other token batches to run it on instead (its own tokens of the same texts).
    """
    adapter = kind_adapter(kind)
    head = head if head is not None else adapter.output_head(core)
    linear = adapter.linear_head(core)
    found = {}
    for name, tb in (batches if batches is not None else batch.token_batches()).items():
        rows, _, states = adapter.token_rows(core, tb, layers)
        found[name] = TeacherStates(rows if want_rows else None, head, states, linear)
    return found
