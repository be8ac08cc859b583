"""The training and scoring batches every layer speaks: one question in a student's tokens
(`Features`), (prompt, target) token batches, packed rows, and every choice of every question
(`ChoiceBatch`). The model kinds lay them out; training and evaluation fill and read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import torch

_T = TypeVar("_T")


def required(value: _T | None, name: str) -> _T:
    """A batch field that the batch's layout (its model kind's) always fills."""
    if value is None:
        raise ValueError(f"this batch has no {name}: it was laid out for another model kind")
    return value


@dataclass
class Features:
    """One question tokenized for one student."""

    gold: int
    prompt: list[int]  # the scoring prompt (kinds with a next-token distribution)
    choices: list[list[int]]  # each choice's continuation tokens (idem)
    context: str  # encoder pairs: the prompt text ...
    choice_texts: list[str]  # ... and each choice's text
    rationales: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    teacher_choice: dict[str, list[float]] = field(default_factory=dict)
    length: int = 0  # the answer prompt's tokens as fitted (batches may be grouped by it)
    rationale_contexts: dict[str, str] = field(default_factory=dict)  # no next-token kinds: the prompt with a rationale


@dataclass
class TokenBatch:
    """Prompt + target sequences; loss on target tokens only.

    Decoder-only (causal): `input_ids` holds prompt+target, `target_mask[b, t]` marks positions
    whose next token (`next_ids[b, t]`) is a target. Encoder-decoder (seq2seq): `input_ids` is the
    encoder input and `labels` the decoder targets (-100 on padding). Built by the model's kind
    (`ModelKind.token_batch`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_mask: torch.Tensor | None = None
    next_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None  # packed rows: positions restart at each sequence

    def to(self, device) -> TokenBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return t.to(device) if t is not None else None

        return TokenBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            move(self.target_mask),
            move(self.next_ids),
            move(self.labels),
            move(self.position_ids),
        )

    def causal_inputs(self) -> dict:
        """The forward arguments of a causal model. Packed rows pass positions and no mask:
        transformers then keeps attention within each sequence (a block-diagonal causal mask, or
        the varlen kernels of flash attention)."""
        if self.position_ids is not None:
            return {"input_ids": self.input_ids, "position_ids": self.position_ids}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    @property
    def tokens(self) -> int:
        extra = int((self.labels != -100).sum()) if self.labels is not None else 0
        return int(self.attention_mask.sum()) + extra

    @property
    def n_targets(self) -> int:
        """Target tokens: the rows the loss is computed on."""
        if self.labels is not None:
            return int((self.labels != -100).sum())
        return int(required(self.target_mask, "target_mask").sum())


def pad_right(rows: list[list[int]], value: int) -> torch.Tensor:
    """Token rows right-padded with `value` to the longest row's width (`pad_rows` without the mask)."""
    return pad_rows(rows, value)[0]


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Indices of sequences grouped into rows of at most `width` tokens, first fit, longest
    first; a sequence longer than `width` has a row of its own. Each index appears once."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, left in enumerate(room):
            if lengths[index] <= left:
                rows[r].append(index)
                room[r] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(width - lengths[index])
    return rows


def packed_token_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> TokenBatch:
    """(prompt, target) pairs packed into as few rows as the longest pair allows, so short pairs
    fill the padding long ones would leave. Positions restart at 0 for each pair; the tail of a
    row is padding with positions of its own, so no real token attends to it or from it."""
    sequences = [p + t for p, t in pairs]
    width = max(len(s) for s in sequences)
    rows = pack_rows([len(s) for s in sequences], width)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    target_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    next_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            sequence, (prompt, target) = sequences[i], pairs[i]
            end = start + len(sequence)
            ids[r, start:end] = torch.tensor(sequence, dtype=torch.long)
            mask[r, start:end] = 1
            positions[r, start:end] = torch.arange(len(sequence))
            next_ids[r, start : end - 1] = ids[r, start + 1 : end]
            target_mask[r, start + len(prompt) - 1 : start + len(prompt) + len(target) - 1] = True
            start = end
        positions[r, start:] = torch.arange(width - start)
    return TokenBatch(ids, mask, target_mask, next_ids, position_ids=positions)


@dataclass
class ChoiceBatch:
    """Every choice of every question, to score the student's distribution over choices.

    Kinds with a next-token distribution: one sequence per (question, choice), `question`/`choice`
    give its place in the [questions, max choices] score table, `gold_sequence` marks the gold
    answers'. Encoder: `tokens` holds [questions, max choices, length] tensors for a
    multiple-choice head. `choice_mask` marks real (not padded) choices. Built by the model's
    kind (`ModelKind.choice_batch`).
    """

    choice_mask: torch.Tensor
    question: torch.Tensor | None = None
    choice: torch.Tensor | None = None
    gold_sequence: torch.Tensor | None = None
    sequences: TokenBatch | None = None
    prompts: TokenBatch | None = None  # seq2seq: the encoder input, once per question
    tokens: dict | None = None

    def to(self, device) -> ChoiceBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return t.to(device) if t is not None else None

        return ChoiceBatch(
            self.choice_mask.to(device),
            move(self.question),
            move(self.choice),
            move(self.gold_sequence),
            self.sequences.to(device) if self.sequences else None,
            self.prompts.to(device) if self.prompts else None,
            {k: v.to(device) for k, v in self.tokens.items()} if self.tokens else None,
        )

    @property
    def n_tokens(self) -> int:
        if self.tokens is not None:
            return int(self.tokens["attention_mask"].sum())
        return required(self.sequences, "sequences").tokens + (self.prompts.tokens if self.prompts else 0)


def continuation_pairs(
    items: list[Features],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[list[int], list[int]]]]:
    """Every (question, choice) as a (prompt, continuation) pair: its question, its choice, whether
    it is the gold answer, and the pairs, in that order."""
    question, choice, gold, pairs = [], [], [], []
    for i, f in enumerate(items):
        for c, cont in enumerate(f.choices):
            question.append(i)
            choice.append(c)
            gold.append(c == f.gold)
            pairs.append((f.prompt, cont))
    return torch.tensor(question), torch.tensor(choice), torch.tensor(gold), pairs


def pad_rows(rows: list[list[int]], pad: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one width on the `left` or `right`, with their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
