"""The student's side of every objective, as one module whose forward returns the loss terms.

Everything a training step computes with the student's weights happens in `StudentObjectives.
forward`, so the module can be wrapped by DDP (`accelerate launch`) as a whole and gradients are
synchronised however many terms a run combines. The weighted sum is the loop's business.

Causal students never materialise [batch, tokens, vocabulary] logits: the body returns hidden
states and the output layer runs on target positions only, a chunk at a time
(`losses.chunked_token_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from tinystudent.distill.data import ChoiceBatch, TokenBatch
from tinystudent.distill.losses import (PAD_SCORE, choice_kd_loss, chunked_token_losses,
                                        hidden_state_loss)


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def causal_head(core) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden states -> logits, including the logit scalings some architectures apply."""
    head = core.get_output_embeddings()
    config = core.config
    multiply = getattr(config, "logit_scale", None)  # Cohere
    divide = getattr(config, "logits_scaling", None)  # Granite
    softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3

    def logits_of(hidden: torch.Tensor) -> torch.Tensor:
        logits = head(hidden)
        if multiply:
            logits = logits * multiply
        if divide:
            logits = logits / divide
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return logits_of


@torch.no_grad()
def check_head(core, name: str) -> None:
    """Refuse architectures whose logits are not `causal_head(core)` of the body's output."""
    was_training = core.training
    core.eval()
    device = next(core.parameters()).device
    vocab = core.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(6, device=device)[None] * 7 + 3) % vocab
    full = core(input_ids=ids, use_cache=False).logits.float()
    split = causal_head(core)(core.base_model(input_ids=ids, use_cache=False).last_hidden_state).float()
    core.train(was_training)
    if not torch.allclose(full, split, atol=1e-3 * max(1.0, full.abs().max().item()), rtol=1e-3):
        raise ValueError(f"{name} ({type(core).__name__}): its logits are not its output layer applied "
                         "to its final hidden states, so the chunked losses cannot train it")


@dataclass
class TeacherStates:
    """A teacher's view of one token batch, at the student's target positions.

    `rows` are final hidden states (causal; `head` turns them into logits) or logits already
    (seq2seq; `head` is the identity). `layers` are hidden states for patient KD.
    """

    rows: torch.Tensor | None
    head: Callable | None
    layers: list[torch.Tensor] = field(default_factory=list)


@dataclass
class StudentBatch:
    """One micro-batch of questions, in the student's tokens."""

    gold: torch.Tensor
    answer: TokenBatch | None = None
    rationales: dict[str, TokenBatch] = field(default_factory=dict)
    choices: ChoiceBatch | None = None
    teacher_choice: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def to(self, device) -> "StudentBatch":
        return StudentBatch(self.gold.to(device), self.answer.to(device) if self.answer else None,
                            {k: v.to(device) for k, v in self.rationales.items()},
                            self.choices.to(device) if self.choices else None,
                            {k: (t.to(device), p.to(device)) for k, (t, p) in self.teacher_choice.items()})

    def token_batches(self) -> dict[str, TokenBatch]:
        found = {"answer": self.answer} if self.answer is not None else {}
        found.update({f"rationale:{m}": tb for m, tb in self.rationales.items()})
        return found

    @property
    def tokens(self) -> int:
        total = sum(tb.tokens for tb in self.token_batches().values())
        return total + (self.choices.n_tokens if self.choices is not None else 0)


class StudentObjectives(torch.nn.Module):
    """Computes the loss terms of one student on one batch.

    Args:
        model: the student (a transformers model, or a PEFT model wrapping one).
        kind: `causal`, `seq2seq` or `encoder`.
        temperature: softening temperature of choice-level and token-level KD.
        divergence, jsd_beta: the token-level divergence (see `losses.token_divergence`).
        chunk_tokens: target tokens per chunk of the output layer.
        kd_vocab: logit rows compared with the teacher's (vocabulary alignment).
        hidden_layers: student hidden-state indices matched in patient KD (0 = embeddings).
    """

    def __init__(self, model: torch.nn.Module, kind: str, temperature: float = 2.0,
                 divergence: str = "forward_kl", jsd_beta: float = 0.5, chunk_tokens: int = 256,
                 kd_vocab: int | None = None, hidden_layers: list[int] | None = None):
        super().__init__()
        self.model = model
        self.kind = kind
        self.temperature, self.divergence, self.jsd_beta = temperature, divergence, jsd_beta
        self.chunk_tokens, self.kd_vocab = chunk_tokens, kd_vocab
        self.hidden_layers = hidden_layers or []

    @property
    def core(self) -> torch.nn.Module:
        return unwrap_peft(self.model)

    # --- token-level passes ---------------------------------------------------------------

    def _token_rows(self, tb: TokenBatch, teacher: TeacherStates | None, want_layers: bool):
        """Log-probability of each target token, its KD divergence, and hidden states."""
        core = self.core
        teacher_rows = teacher.rows if teacher is not None and teacher.rows is not None else None
        teacher_head = teacher.head if teacher_rows is not None else None
        kd_args = dict(teacher_hidden=teacher_rows, teacher_head=teacher_head, kd_vocab=self.kd_vocab,
                       divergence=self.divergence, temperature=self.temperature, beta=self.jsd_beta,
                       chunk_tokens=self.chunk_tokens)
        layers = []
        if self.kind == "causal":
            out = core.base_model(input_ids=tb.input_ids, attention_mask=tb.attention_mask,
                                  use_cache=False, output_hidden_states=want_layers)
            rows = out.last_hidden_state[tb.target_mask]
            targets = tb.next_ids[tb.target_mask]
            logprobs, kd = chunked_token_losses(rows, targets, causal_head(core), **kd_args)
            if want_layers:
                real = tb.attention_mask.bool()
                layers = [out.hidden_states[i][real] for i in self.hidden_layers]
            return logprobs, kd, layers
        decoder_input_ids = core.prepare_decoder_input_ids_from_labels(labels=tb.labels)
        out = core(input_ids=tb.input_ids, attention_mask=tb.attention_mask,
                   decoder_input_ids=decoder_input_ids, use_cache=False,
                   output_hidden_states=want_layers)
        mask = tb.labels != -100
        logprobs, kd = chunked_token_losses(out.logits[mask], tb.labels[mask], _identity, **kd_args)
        if want_layers:
            layers = [out.decoder_hidden_states[i][mask] for i in self.hidden_layers]
        return logprobs, kd, layers

    # --- choice-level pass ----------------------------------------------------------------

    def _choice_scores(self, cb: ChoiceBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[questions, max choices] student scores (PAD_SCORE on padding) and the gold
        continuations' token log-probabilities (causal, seq2seq)."""
        core = self.core
        if self.kind == "encoder":
            logits = core(**cb.tokens).logits.float()
            return logits.masked_fill(~cb.choice_mask, PAD_SCORE), None
        if self.kind == "causal":
            logprobs, _, _ = self._token_rows(cb.sequences, None, False)
            sequence_of_row = cb.sequences.target_mask.nonzero()[:, 0]
        else:
            encoded = core.get_encoder()(input_ids=cb.prompts.input_ids,
                                         attention_mask=cb.prompts.attention_mask)
            hidden = encoded.last_hidden_state[cb.question]
            labels = cb.sequences.labels
            out = core(encoder_outputs=(hidden,), attention_mask=cb.prompts.attention_mask[cb.question],
                       decoder_input_ids=core.prepare_decoder_input_ids_from_labels(labels=labels),
                       use_cache=False)
            mask = labels != -100
            logprobs = F.log_softmax(out.logits[mask].float(), dim=-1).gather(
                -1, labels[mask][:, None]).squeeze(-1)
            sequence_of_row = mask.nonzero()[:, 0]
        per_sequence = torch.zeros(cb.question.shape[0], device=logprobs.device).index_add(
            0, sequence_of_row, logprobs)
        scores = torch.full(cb.choice_mask.shape, PAD_SCORE, device=logprobs.device)
        scores = scores.index_put((cb.question, cb.choice), per_sequence)
        gold_rows = logprobs[cb.gold_sequence[sequence_of_row]]
        return scores, gold_rows

    # --- all terms ------------------------------------------------------------------------

    def forward(self, batch: StudentBatch, teacher: dict[str, TeacherStates] | None = None,
                want_hidden: bool = False) -> dict[str, torch.Tensor]:
        """Loss terms (means over tokens or questions) plus `choice_scores` when choices were scored."""
        teacher = teacher or {}
        parts: dict[str, torch.Tensor] = {}
        kd_rows, hidden_terms = [], []
        for name, tb in batch.token_batches().items():
            states = teacher.get(name)
            logprobs, kd, layers = self._token_rows(tb, states, want_hidden and states is not None)
            if logprobs.numel():
                parts[name] = -logprobs.mean()
            if states is not None and states.rows is not None:
                kd_rows.append(kd)
            if layers and states is not None and states.layers:
                hidden_terms.append(hidden_state_loss(layers, states.layers))
        if kd_rows:
            parts["logit_kd"] = torch.cat(kd_rows).mean()
        if hidden_terms:
            parts["hidden"] = torch.stack(hidden_terms).mean()
        if batch.choices is not None:
            scores, gold_rows = self._choice_scores(batch.choices)
            parts["choice_scores"] = scores
            if "answer" not in parts:
                parts["answer"] = (F.cross_entropy(scores, batch.gold) if gold_rows is None
                                   else -gold_rows.mean())
            for teacher_name, (table, present) in batch.teacher_choice.items():
                if present.any():
                    parts[f"choice_kd:{teacher_name}"] = choice_kd_loss(
                        scores[present], table[present], self.temperature).mean()
        return parts


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@torch.no_grad()
def teacher_states(core, kind: str, head: Callable | None, batch: StudentBatch,
                   want_rows: bool, layers: list[int]) -> dict[str, TeacherStates]:
    """Run the teacher (in eval mode, without gradients) on the student's token batches."""
    found = {}
    for name, tb in batch.token_batches().items():
        if kind == "causal":
            out = core.base_model(input_ids=tb.input_ids, attention_mask=tb.attention_mask,
                                  use_cache=False, output_hidden_states=bool(layers))
            rows = out.last_hidden_state[tb.target_mask] if want_rows else None
            real = tb.attention_mask.bool()
            states = [out.hidden_states[i][real] for i in layers] if layers else []
            found[name] = TeacherStates(rows, head, states)
        else:
            out = core(input_ids=tb.input_ids, attention_mask=tb.attention_mask,
                       decoder_input_ids=core.prepare_decoder_input_ids_from_labels(labels=tb.labels),
                       use_cache=False, output_hidden_states=bool(layers))
            mask = tb.labels != -100
            rows = out.logits[mask] if want_rows else None
            states = [out.decoder_hidden_states[i][mask] for i in layers] if layers else []
            found[name] = TeacherStates(rows, _identity, states)
    return found
