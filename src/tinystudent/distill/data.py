"""Training data: teacher outputs checked against the questions, tokenized once, batched.

The answer task is tokenized exactly as evaluation scores it (`evaluation.scoring`): the prompt
is `prompts.choice_context(example, style)` and the target the continuation ` {choice}`, so the
student is trained on the very format it is judged by. Rationale tasks put each teacher's own
prefix in front of the question with lettered choices (TinyLLM, Tian et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from tinystudent.distill.terms import terms
from tinystudent.evaluation.fit import CUT, Fitted, InputTooLong, fit_example, fit_summary, token_counter
from tinystudent.evaluation.freeform import free_form_prompt, solution_text
from tinystudent.evaluation.prompts import choice_context, choice_continuations, lettered_question
from tinystudent.log import warn
from tinystudent.models.batches import ChoiceBatch, Features, TokenBatch, required
from tinystudent.models.heads import PAD_SCORE
from tinystudent.models.kinds import ModelKind, kind_adapter
from tinystudent.models.requests import ChoiceRequest
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


def check_free_form_objectives(config, choice_logprobs: dict | None, mutual: bool) -> None:
    """A free-form task has no choices to score: its answer is learnt as tokens, and choice-level
    distillation and mutual learning (both over choices) do not apply."""
    if config.answer_loss == "choices":
        raise ValueError(
            "answer_loss: choices needs questions with choices; this task is free-form: use answer_loss: tokens"
        )
    if choice_logprobs:
        raise ValueError("choice_kd learns a distribution over choices; this task is free-form and has none")
    writer = kind_adapter("causal")  # a student of a free-form task writes its answer
    for found in terms():
        over_choices = found.needs(writer, "tokens")
        if not found.with_peers and config.weights.configured(found.name) and over_choices.choices:
            raise ValueError(f"{found.name} learns a distribution over choices; this task is free-form and has none")
    if mutual:
        raise ValueError("mutual learning compares distributions over choices; this task is free-form and has none")


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
    answer = tokenizer.encode(f" {solution_text(ex.answer_text)}", add_special_tokens=False)[:max_answer] + eos
    context = free_form_prompt(fitted.example, [], False)
    feats = Features(0, adapter.encode_input(tokenizer, context), [answer], context, [ex.answer_text])
    feats.length = fitted.tokens
    think = lambda e: free_form_prompt(e, [], True)  # noqa: E731
    for teacher, by_id in rationales.items():
        if ex.id in by_id:
            question = think(fit_example(ex, think, count, tokenizer, max_input, evidence).example)
            target = tokenizer.encode(f" {solution_text(ex.answer_text, by_id[ex.id])}", add_special_tokens=False)
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
    *,
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


def token_batch(
    pairs: list[tuple[list[int], list[int]]], kind: str | ModelKind, pad_id: int, pack: bool = False
) -> TokenBatch:
    """Right-padded batch of (prompt, target) pairs, laid out for the model's kind; with `pack`
    (decoder-only kinds), several pairs share a row."""
    return kind_adapter(kind).token_batch(pairs, pad_id, pack)


def choice_batch(
    items: list[Features], kind: str | ModelKind, pad_id: int, tokenizer=None, max_length: int = 256
) -> ChoiceBatch:
    """Every choice of every question, laid out for the model's kind."""
    width = max(len(f.choice_texts) for f in items)
    choice_mask = torch.zeros(len(items), width, dtype=torch.bool)
    for i, f in enumerate(items):
        choice_mask[i, : len(f.choice_texts)] = True
    return kind_adapter(kind).choice_batch(items, choice_mask, pad_id, tokenizer, max_length)


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


_PLACE = 1 << 20  # a tag's pair index is tag // _PLACE, its target position tag % _PLACE


def target_places(pairs: list[tuple[list[int], list[int]]], kind: str | ModelKind, pack: bool) -> torch.Tensor:
    """[target rows] the (pair, position in its target) of each target row of `token_batch(pairs)`,
    as `pair * 2**20 + position`: the pairs are laid out with tags in place of their target ids,
    and the rows read back in the order the kind's `token_rows` gives them, however it lays them
    out (padded, packed, decoder labels)."""
    tagged = [(prompt, [i * _PLACE + j for j in range(len(target))]) for i, (prompt, target) in enumerate(pairs)]
    tb = token_batch(tagged, kind, -1, pack)
    if tb.labels is not None:
        return tb.labels[tb.labels != -100]
    return required(tb.next_ids, "next_ids")[required(tb.target_mask, "target_mask")]


def align_targets(
    student_pairs: list[tuple[list[int], list[int]]],
    teacher_pairs: dict[str, list[tuple[list[int], list[int]] | None]],
    kind: str | ModelKind,
    pack: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, list[int]]]:
    """Pair the student's target rows with each teacher's, by position along each target: the
    first min(n_student, n_teacher) tokens of every target, over every teacher at once, so all
    teachers are compared at the same student rows (ULD, Boizard et al. 2024).

    Args:
        student_pairs: the (prompt, target) pairs of one student token batch.
        teacher_pairs: teacher -> the same texts in its tokens, pair by pair (None: it has none).
        kind, pack: how the batches are laid out (`token_batch`).

    Returns:
        (the student's aligned target rows, teacher -> its aligned target rows in a batch of its
        present pairs, teacher -> which pairs are present), each teacher's rows in the student's order.
    """
    present = {t: [i for i, p in enumerate(pairs) if p is not None] for t, pairs in teacher_pairs.items()}
    lengths = [len(target) for _, target in student_pairs]
    for pairs in teacher_pairs.values():
        lengths = [min(n, len(p[1])) if p is not None else 0 for n, p in zip(lengths, pairs)]
    student = target_places(student_pairs, kind, pack)
    keep = student % _PLACE < torch.tensor(lengths, dtype=torch.long)[student // _PLACE]
    student_rows = keep.nonzero()[:, 0]
    wanted = student[student_rows]
    teacher_rows = {}
    for t, indices in present.items():
        if not indices:  # no pair in its tokens: nothing of this batch is aligned (lengths are 0)
            teacher_rows[t] = torch.zeros(0, dtype=torch.long)
            continue
        places = target_places([teacher_pairs[t][i] for i in indices], kind, pack)  # type: ignore[misc]
        # Back to the student's pair numbering, then each wanted place's row, found by sorting.
        original = torch.tensor(indices, dtype=torch.long)[places // _PLACE] * _PLACE + places % _PLACE
        order = original.argsort()
        teacher_rows[t] = order[torch.searchsorted(original[order], wanted)]
    return student_rows, teacher_rows, present
