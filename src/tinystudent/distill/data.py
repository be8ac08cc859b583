"""Training data: teacher outputs checked against the questions, tokenized once, batched.

The answer task is tokenized exactly as evaluation scores it (`evaluation.scoring`): the prompt
is `prompts.choice_context(example, style)` and the target the continuation ` {choice}`, so the
student is trained on the very format it is judged by. Rationale tasks put each teacher's own
prefix in front of the question with lettered choices (TinyLLM, Tian et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TypeVar

import torch

from tinystudent.distill.losses import PAD_SCORE
from tinystudent.evaluation.fit import CUT, Fitted, InputTooLong, fit_example, fit_summary, token_counter
from tinystudent.evaluation.freeform import ANSWER_IS, free_form_prompt
from tinystudent.evaluation.prompts import choice_context, choice_continuations, lettered_question
from tinystudent.evaluation.scoring import ChoiceRequest
from tinystudent.log import warn
from tinystudent.models.kinds import ModelKind, kind_adapter
from tinystudent.tasks.schema import Example

# --- teacher outputs -------------------------------------------------------------------------


def check_rationales(
    rationales: dict[str, dict[str, str]] | None, examples: list[Example]
) -> dict[str, dict[str, str]]:
    """Keep non-empty rationales of training questions; refuse a teacher that covers none."""
    if not rationales:
        return {}
    ids = {ex.id for ex in examples}
    kept = {}
    for teacher, by_id in rationales.items():
        if not isinstance(by_id, dict):
            raise ValueError(f"rationales[{teacher!r}] must map example id -> text, got {type(by_id).__name__}")
        usable = {i: t.strip() for i, t in by_id.items() if i in ids and isinstance(t, str) and t.strip()}
        if not usable:
            sample_theirs, sample_ours = sorted(by_id)[:3], sorted(ids)[:3]
            raise ValueError(
                f"teacher {teacher!r}: none of its {len(by_id)} rationales belongs to a training "
                f"question (its ids look like {sample_theirs}, the questions' like {sample_ours}); "
                "were they made for another task or split?"
            )
        if len(usable) < len(ids):
            warn(
                f"teacher {teacher!r} has rationales for {len(usable)} of {len(ids)} training "
                "questions; the others train without its rationale"
            )
        kept[teacher] = usable
    return kept


def check_choice_logprobs(
    choice_logprobs: dict[str, dict[str, list[float]]] | None, examples: list[Example]
) -> dict[str, dict[str, list[float]]]:
    """Keep teacher choice scores of training questions; each must have one number per choice."""
    if not choice_logprobs:
        return {}
    by_example = {ex.id: ex for ex in examples}
    kept = {}
    for teacher, by_id in choice_logprobs.items():
        usable = {}
        for example_id, scores in by_id.items():
            ex = by_example.get(example_id)
            if ex is None:
                continue
            if len(scores) != len(ex.choices):
                raise ValueError(
                    f"teacher {teacher!r}, example {example_id!r}: {len(scores)} choice "
                    f"log-probabilities for {len(ex.choices)} choices"
                )
            if any(math.isnan(float(s)) for s in scores):
                raise ValueError(f"teacher {teacher!r}, example {example_id!r}: a choice log-probability is NaN")
            usable[example_id] = [float(s) if math.isfinite(float(s)) else PAD_SCORE for s in scores]
        if not usable:
            raise ValueError(
                f"teacher {teacher!r}: none of its {len(by_id)} choice distributions "
                f"belongs to a training question (ids like {sorted(by_id)[:3]})"
            )
        if len(usable) < len(examples):
            warn(
                f"teacher {teacher!r} has choice probabilities for {len(usable)} of {len(examples)} training questions"
            )
        kept[teacher] = usable
    return kept


def ensemble_choice_logprobs(by_teacher: dict[str, dict[str, list[float]]]) -> dict[str, list[float]]:
    """Several teachers' choice scores as one ensemble: per question, the log of the mean of their
    distributions over the choices (each teacher's scores softmaxed first), over the teachers that
    scored it (Hinton et al. 2015's ensemble of teachers)."""
    rows: dict[str, list[torch.Tensor]] = {}
    for scores_by_id in by_teacher.values():
        for example_id, scores in scores_by_id.items():
            rows.setdefault(example_id, []).append(torch.log_softmax(torch.tensor(scores, dtype=torch.float64), -1))
    return {
        example_id: (torch.logsumexp(torch.stack(found), 0) - math.log(len(found))).tolist()
        for example_id, found in rows.items()
    }


# --- tokenized examples ------------------------------------------------------------------------


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


def check_free_form_objectives(config, choice_logprobs: dict | None, mutual: bool) -> None:
    """A free-form task has no choices to score: its answer is learnt as tokens, and choice-level
    distillation and mutual learning (both over choices) do not apply."""
    if config.answer_loss == "choices":
        raise ValueError(
            "answer_loss: choices needs questions with choices; this task is free-form: use answer_loss: tokens"
        )
    if choice_logprobs or config.weights.choice_kd:
        raise ValueError("choice_kd learns a distribution over choices; this task is free-form and has none")
    if mutual:
        raise ValueError("mutual learning compares distributions over choices; this task is free-form and has none")


def free_form_answer(example: Example, rationale: str | None = None) -> str:
    """What a free-form student learns to write after its prompt: " The answer is N." or, taught
    by a rationale, " <rationale> The answer is N." (a rationale that already ends so is kept as
    it is). Evaluation reads it back with `evaluation.freeform` (strict: "The answer is N.")."""
    final = f"{ANSWER_IS} {example.target}."
    if not rationale:
        return f" {final}"
    steps = " ".join(line.strip() for line in rationale.splitlines() if line.strip())
    return f" {steps}" if steps.rstrip(".").endswith(f"{ANSWER_IS} {example.target}") else f" {steps} {final}"


def _free_form_features(
    ex: Example,
    tokenizer,
    adapter: ModelKind,
    rationales: dict[str, dict[str, str]],
    max_input: int,
    max_answer: int,
    max_rationale: int,
    evidence: str,
) -> tuple[Features, Fitted]:
    """A free-form question for a student that writes text: the answer task is "Q: ...\\nA:" ->
    " The answer is N."; each teacher's rationale task is the zero-shot chain-of-thought prompt
    ("... A: Let's think step by step.") -> " <rationale> The answer is N.", so that evaluation's
    `generate` and `generate_cot` modes ask exactly what each task taught."""
    if not adapter.generates:
        raise adapter.unsupported("learn a free-form task (it writes no text)")
    count = token_counter(tokenizer, adapter.prompt_special_tokens)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    fitted = fit_example(ex, lambda e: free_form_prompt(e, [], False), count, tokenizer, max_input, evidence)
    answer = tokenizer.encode(free_form_answer(ex), add_special_tokens=False)[:max_answer] + eos
    context = free_form_prompt(fitted.example, [], False)
    feats = Features(0, adapter.encode_input(tokenizer, context), [answer], context, [ex.answer_text])
    feats.length = fitted.tokens
    think = lambda e: free_form_prompt(e, [], True)  # noqa: E731
    for teacher, by_id in rationales.items():
        if ex.id in by_id:
            question = think(fit_example(ex, think, count, tokenizer, max_input, evidence).example)
            target = tokenizer.encode(free_form_answer(ex, by_id[ex.id]), add_special_tokens=False)
            feats.rationales[teacher] = (adapter.encode_input(tokenizer, question), target[:max_rationale] + eos)
    return feats, fitted


def fit_answer_prompt(
    ex: Example, tokenizer, kind: str | ModelKind, style: str, budget: int, evidence: str = CUT
) -> Fitted:
    """The answer task's prompt fitted exactly as evaluation fits it for this model kind: leaving
    room for its longest choice (`ModelKind.choice_reserve`), counting the prompt's tokens as
    the model receives them and shortening evidence by the same strategy (`evidence`)."""
    adapter = kind_adapter(kind)
    render = lambda e: choice_context(e, style)  # noqa: E731
    reserve = adapter.choice_reserve(tokenizer, choice_continuations(ex))
    count = token_counter(tokenizer, adapter.prompt_special_tokens)
    return fit_example(ex, render, count, tokenizer, budget - reserve, evidence)


RATIONALE_INPUT = "{question}\nExplanation: {rationale}"


def with_rationale(ex: Example, rationale: str, tokenizer, max_tokens: int) -> Example:
    """`ex` whose question is followed by a teacher's rationale (its first `max_tokens` tokens), for a
    student that reads rationales instead of writing them: fitting keeps a question whole, so the
    rationale stays and the evidence is what shortens."""
    spans = tokenizer(rationale, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    if len(spans) > max_tokens:
        rationale = rationale[: spans[max_tokens - 1][1]]
    return replace(ex, question=RATIONALE_INPUT.format(question=ex.question, rationale=rationale.strip()))


def build_features(
    examples: list[Example],
    tokenizer,
    kind: str | ModelKind,
    style: str,
    rationales: dict[str, dict[str, str]],
    choice_logprobs: dict[str, dict[str, list[float]]],
    rationale_prompt: str,
    max_input: int,
    max_answer: int,
    max_rationale: int,
    evidence: str = CUT,
) -> tuple[dict[str, Features], dict]:
    """Tokenize every question once: answer prompt, choices, and each teacher's rationale task.

    Every input is fitted to `max_input` tokens by shortening its evidence (`evidence`: cut its
    end or select its sentences), never its question (`evaluation.fit`). Token ids (prompt,
    choices, rationale tasks) are made for kinds with a next-token distribution; an encoder reads
    the prompt and choice texts as pairs. Returns the features by question id and the fit summary
    of the answer prompts (how many were cut).
    """
    adapter = kind_adapter(kind)
    eos = tokenizer.eos_token_id
    features, fitted, skipped = {}, [], 0
    count = token_counter(tokenizer, adapter.prompt_special_tokens)
    for ex in examples:
        if ex.free_form:
            features[ex.id], answer_fit = _free_form_features(
                ex, tokenizer, adapter, rationales, max_input, max_answer, max_rationale, evidence
            )
            fitted.append(answer_fit)
            continue
        answer_fit = fit_answer_prompt(ex, tokenizer, adapter, style, max_input, evidence)
        fitted.append(answer_fit)
        context = choice_context(answer_fit.example, style)
        prompt, choices = [], []
        if adapter.next_token:
            prompt, choices = adapter.encode_choices(tokenizer, ChoiceRequest(context, choice_continuations(ex)))
        feats = Features(
            ex.answer,
            prompt,
            [c[:max_answer] for c in choices],
            context,
            [c.strip() for c in ex.choices],
            length=answer_fit.tokens,
        )
        for teacher, by_id in rationales.items():
            if ex.id in by_id and not adapter.next_token:
                read = with_rationale(ex, by_id[ex.id], tokenizer, max_rationale)
                fitted_read = fit_answer_prompt(read, tokenizer, adapter, style, max_input, evidence)
                feats.rationale_contexts[teacher] = choice_context(fitted_read.example, style)
            if ex.id in by_id and adapter.next_token:
                render = lambda e, t=teacher: rationale_prompt.format(teacher=t, question=lettered_question(e))  # noqa: E731
                try:
                    question = render(fit_example(ex, render, count, tokenizer, max_input, evidence).example)
                except InputTooLong:
                    skipped += 1  # its lettered choices alone exceed the budget: no rationale task
                    continue
                target = tokenizer.encode(" " + by_id[ex.id], add_special_tokens=False)[:max_rationale]
                if eos is not None:
                    target = target + [eos]
                feats.rationales[teacher] = (adapter.encode_input(tokenizer, question), target)
        for teacher, scores_by_id in choice_logprobs.items():
            if ex.id in scores_by_id:
                feats.teacher_choice[teacher] = scores_by_id[ex.id]
        features[ex.id] = feats
    if skipped:
        warn(f"{skipped} rationale task(s) left out: the question's choices alone exceed max_input_tokens={max_input}")
    return features, {**fit_summary(fitted, max_input, evidence), "rationale_tasks_left_out": skipped}


# --- batches ---------------------------------------------------------------------------------

_T = TypeVar("_T")


def required(value: _T | None, name: str) -> _T:
    """A batch field that the batch's layout (its model kind's) always fills."""
    if value is None:
        raise ValueError(f"this batch has no {name}: it was laid out for another model kind")
    return value


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
    """Token rows right-padded with `value` to the longest row's width."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def token_batch(
    pairs: list[tuple[list[int], list[int]]], kind: str | ModelKind, pad_id: int, pack: bool = False
) -> TokenBatch:
    """Right-padded batch of (prompt, target) pairs, laid out for the model's kind; with `pack`
    (decoder-only kinds), several pairs share a row."""
    return kind_adapter(kind).token_batch(pairs, pad_id, pack)


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


def choice_batch(
    items: list[Features], kind: str | ModelKind, pad_id: int, tokenizer=None, max_length: int = 256
) -> ChoiceBatch:
    """Every choice of every question, laid out for the model's kind."""
    width = max(len(f.choice_texts) for f in items)
    choice_mask = torch.zeros(len(items), width, dtype=torch.bool)
    for i, f in enumerate(items):
        choice_mask[i, : len(f.choice_texts)] = True
    return kind_adapter(kind).choice_batch(items, choice_mask, pad_id, tokenizer, max_length)


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


def teacher_choice_table(items: list[Features], teacher: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[questions, width] teacher scores (PAD_SCORE where absent) and which questions have them."""
    table = torch.full((len(items), width), PAD_SCORE, dtype=torch.float32)
    present = torch.zeros(len(items), dtype=torch.bool)
    for i, f in enumerate(items):
        scores = f.teacher_choice.get(teacher)
        if scores is not None:
            table[i, : len(scores)] = torch.tensor(scores)
            present[i] = True
    return table, present


# --- data order ------------------------------------------------------------------------------


GROUP_BATCHES = 32  # batches whose examples are sorted by length together when grouping by length


class SampleStream:
    """An endless, seeded order over the examples: epoch e is a fixed permutation.

    Position k of the stream is example `perm_{k // n}[k % n]`, so a run that resumes at
    position k sees exactly what an uninterrupted run would.

    With `lengths` (each example's input tokens) and `batch_size`, an epoch's permutation is
    grouped by length: it is cut into spans of `GROUP_BATCHES` batches, each span sorted by length
    and cut into batches, and the order of all the epoch's batches is shuffled again. Each batch
    then holds examples of similar length, so little of it is padding, and the order is still a
    seeded permutation of every example (transformers' `group_by_length` does the same).
    """

    def __init__(self, n: int, seed: int, lengths: list[int] | None = None, batch_size: int = 1):
        if n < 1:
            raise ValueError("training needs at least one example")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} examples")
        self.n, self.seed, self.lengths, self.batch_size = n, seed, lengths, batch_size
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
            if self.lengths is not None and self.batch_size > 1:
                order = self._grouped(order, generator)
            self._perms = {epoch: order}
        return self._perms[epoch]

    def _grouped(self, order: list[int], generator: torch.Generator) -> list[int]:
        lengths, size = self.lengths or [], self.batch_size
        span = size * GROUP_BATCHES
        batches = []
        for start in range(0, len(order), span):
            ranked = sorted(order[start : start + span], key=lambda i: -lengths[i])
            batches += [ranked[b : b + size] for b in range(0, len(ranked), size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [i for b in shuffled for i in batches[b]]

    def take(self, start: int, count: int) -> list[int]:
        return [self._perm(k // self.n)[k % self.n] for k in range(start, start + count)]
