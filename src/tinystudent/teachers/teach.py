"""Asking a teacher about many questions, through the cache: each output is computed once.

`teach` builds each question's prompt, looks its key up in the cache, sends only the misses to
the teacher, and stores every new output the moment it arrives. A second identical run makes no
model call; a run stopped at any point resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tinystudent.evaluation.fit import CUT, Fitted, fit_example, fit_with_shots
from tinystudent.evaluation.freeform import INVALID, final_answer
from tinystudent.evaluation.prompts import choice_context, choice_continuations, draw_shots, prompt_style
from tinystudent.log import warn
from tinystudent.models.requests import ChoiceRequest
from tinystudent.redact import redact
from tinystudent.store import Store
from tinystudent.tasks.schema import FREE_FORM, Example
from tinystudent.teachers import cache
from tinystudent.teachers.base import (
    Generation,
    GenerationResult,
    GenerationSettings,
    ScoringUnsupported,
    Teacher,
    TeacherError,
    TeacherOutput,
    TeacherUnavailable,
)
from tinystudent.teachers.cleanup import clean_text, stated_answer
from tinystudent.teachers.prompts import Strategy, build_prompt, get_strategy, render_shot

SCORING = "choice_logprobs"
RATIONALE_STRATEGIES = ("cot", "teacher_forcing_cot", "imported")
KEEP = ("all", "matching")
# Bumped when the clean-up code changes, so cached outputs are cleaned again (without model calls).
CLEANUP_VERSION = 2
OnOutput = Callable[[str, "TeacherOutput | None"], None]  # ("cached" | "generated" | "failed", output)


@dataclass(kw_only=True)
class TeachSummary:
    """What one `teach` run did.

    Attributes:
        n: questions asked about; generated + cached + failed == n.
        generated: outputs the teacher produced in this run (now cached).
        cached: outputs found in the cache (no model call).
        failed: questions with no output (see `errors`).
        matching: outputs whose stated answer is the gold one; unparsed: outputs stating none.
        truncated: prompts whose evidence was cut to fit the teacher's input budget.
        kept: outputs returned in `outputs` after the `keep` filter.
        model_calls: prompts the teacher was sent in this run (0 when everything was cached).
        errors: the distinct failure messages, first ones first (at most 10).
    """

    teacher: str
    task: str
    strategy: str
    n: int = 0
    generated: int = 0
    cached: int = 0
    failed: int = 0
    matching: int = 0
    unparsed: int = 0
    truncated: int = 0
    kept: int = 0
    model_calls: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    outputs: list[TeacherOutput] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Everything but the outputs, as `tinystudent teach --json` prints it."""
        return {k: v for k, v in self.__dict__.items() if k != "outputs"}

    def _count(
        self, kind: str, output: TeacherOutput | None, error: str | None = None, on_output: OnOutput | None = None
    ) -> None:
        """Count one question's outcome, then tell the caller's `on_output`, if any."""
        setattr(self, kind, getattr(self, kind) + 1)
        error = redact(error) if error else error
        if error and error not in self.errors and len(self.errors) < 10:
            self.errors.append(error)
        if output is not None:
            self.matching += output.matches_gold is True
            self.unparsed += output.answer is None
        if on_output:
            on_output(kind, output)


def _prompt_seed(seed: int, full_prompt: str) -> int:
    """A sampling seed per prompt, so a sample never depends on its batch."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{full_prompt}".encode()).digest()[:8], "big") >> 1


def _make_output(
    teacher: Teacher,
    example: Example,
    strategy: str,
    task: str,
    key: str,
    raw: str,
    cleanup: dict,
    writes_rationale: bool,
    extra: dict | None = None,
) -> TeacherOutput:
    budget = cleanup.get("max_rationale_tokens") if writes_rationale else None
    truncated = (extra or {}).get("finish_reason") == "length"
    text = clean_text(raw, example.question, budget, teacher.count_tokens, truncated)
    meta = {**(extra or {}), "raw": raw, "cleanup": cleanup, "identity": teacher.identity}
    if example.free_form:
        answer, matches = judged_free_form_answer(text, example)
        meta["stated_answer"] = None if answer is None else matches[1]
        matches_gold = None if answer is None else matches[0]
    else:
        answer = stated_answer(text, example.choices)
        matches_gold = None if answer is None else answer == example.answer
    return TeacherOutput(
        teacher=cache.teacher_key(teacher.name),
        example_id=example.id,
        strategy=strategy,
        text=text,
        answer=answer,
        choice_logprobs=None,
        matches_gold=matches_gold,
        cache_key=key,
        task=task,
        meta=meta,
    )


def judged_free_form_answer(text: str, example: Example) -> tuple[int | None, tuple[bool, str]]:
    """What a teacher's text states as a free-form question's answer (`freeform.final_answer`):
    (`FREE_FORM` when it states one, else None; (whether it is the gold answer, the answer))."""
    found = final_answer(text, example.answer_text)
    return (None, (False, INVALID)) if found is None else (FREE_FORM, (found[1], found[0]))


def input_budget(teacher: Teacher, max_input_tokens: int | None, reserve: int = 0) -> int | None:
    """Tokens a teacher's prompt may take: the user's input budget, or less where the teacher's
    context must also hold `reserve` generated tokens; None when the teacher's tokenizer is not at
    hand (prompts go as they are)."""
    if teacher.tokenizer is None:
        return None
    limits = [limit for limit in (teacher.input_limit and teacher.input_limit - reserve, max_input_tokens) if limit]
    return min(limits) if limits else None


def _fitted_prompt(
    teacher: Teacher, spec, example: Example, shots: list[Example], budget: int | None, evidence: str = CUT
) -> tuple[str, str | None]:
    """The question's prompt with its and its in-context examples' evidence shortened to `budget`
    by the strategy `evidence` (`fit.fit_with_shots`); returns (prompt, what was cut from the
    question's own input)."""
    if budget is None:
        return build_prompt(spec, example, shots), None
    plain = lambda text: teacher.count_tokens(text) or 0  # noqa: E731
    whole = lambda text: plain(text) + 1  # noqa: E731  a start token may be added to the whole prompt
    fitted, fitted_shots = fit_with_shots(
        example,
        shots,
        lambda e, s: teacher.full_prompt(build_prompt(spec, e, s)),
        lambda e: render_shot(spec, e),
        whole,
        teacher.tokenizer,
        budget,
        evidence,
    )
    return build_prompt(spec, fitted.example, fitted_shots), fitted.cut


def teach(
    teacher: Teacher,
    examples: Sequence[Example],
    task: str,
    strategy: str,
    store: Store,
    *,
    train_examples: Sequence[Example] | None = None,
    k_shots: int = 2,
    seed: int = 0,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    template: str | None = None,
    shot_template: str | None = None,
    max_rationale_tokens: int | None = None,
    keep: str = "all",
    on_output: OnOutput | None = None,
    max_input_tokens: int | None = None,
    evidence: str = CUT,
) -> TeachSummary:
    """Get one output per question from `teacher`, using and filling the cache.

    Args:
        teacher: a backend from `make_teacher`.
        examples: the questions.
        task: the task's name or path (outputs are stored under it).
        strategy: `zero_shot`, `few_shot`, `cot`, `teacher_forcing_cot` or `choice_logprobs`.
        store: the results database holding the cache.
        train_examples: where in-context examples are drawn from (default: `examples`).
        k_shots: in-context examples per question for `few_shot` and `teacher_forcing_cot` (default 2).
        seed: seeds the draw of in-context examples and, when sampling, each prompt's sample.
        max_new_tokens, temperature, top_p: generation settings (default greedy, 128 tokens).
        template, shot_template: replace the strategy's templates (see `teachers.prompts`).
        max_rationale_tokens: trim rationales to this many tokens (default: no trim).
        keep: `all` outputs, or only those whose stated answer `matching` the gold one; the
            others stay cached either way.
        on_output: called after each question with its status and output, e.g. for a progress bar.
        max_input_tokens: fit each prompt to this many tokens (default and at most: the teacher's
            limit, less `max_new_tokens`) by cutting the evidence of the question and its
            in-context examples, never their questions (a local teacher; a server gets prompts whole).
        evidence: how that evidence is shortened: `cut` its end, or `select` the sentences most
            related to the question (`evaluation.fit`).

    Raises:
        TeacherUnavailable: the teacher stopped answering; everything finished is cached.
    """
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if strategy == SCORING:
        return _score(teacher, examples, task, store, on_output, max_input_tokens, evidence)
    spec = get_strategy(strategy, template, shot_template)
    settings = GenerationSettings(max_new_tokens, temperature, top_p, seed, spec.stop)
    pool = list(train_examples) if train_examples is not None else list(examples)
    task_name = cache.task_key(task)
    cleanup = {"version": CLEANUP_VERSION, "max_rationale_tokens": max_rationale_tokens}
    summary = TeachSummary(teacher=cache.teacher_key(teacher.name), task=task_name, strategy=strategy, n=len(examples))
    lesson = _Lesson(
        teacher=teacher,
        store=store,
        examples=examples,
        strategy=strategy,
        task_name=task_name,
        spec=spec,
        settings=settings,
        cleanup=cleanup,
        summary=summary,
        on_output=on_output,
        evidence=evidence,
    )
    started, calls_before = time.perf_counter(), teacher.calls

    budget = input_budget(teacher, max_input_tokens, max_new_tokens)
    asked = [_ask(lesson, example, pool, k_shots, seed, budget) for example in examples]
    outputs, missing = _outputs_from_cache(lesson, asked)
    _generate_missing(lesson, asked, missing, outputs)
    kept = [o for o in outputs if o is not None and (keep == "all" or o.matches_gold)]
    return _finish(summary, kept, teacher, calls_before, started)


@dataclass(kw_only=True)
class _Lesson:
    """What every question of one generating `teach` run shares."""

    teacher: Teacher
    store: Store
    examples: Sequence[Example]
    strategy: str
    task_name: str
    spec: Strategy
    settings: GenerationSettings
    cleanup: dict
    summary: TeachSummary
    on_output: OnOutput | None
    evidence: str = CUT

    def count(self, kind: str, output: TeacherOutput | None, error: str | None = None) -> None:
        self.summary._count(kind, output, error, on_output=self.on_output)

    def output(self, i: int, key: str, raw: str, extra: dict) -> TeacherOutput:
        """Question `i`'s output from the teacher's `raw` text, cleaned as this run cleans."""
        return _make_output(
            self.teacher,
            self.examples[i],
            self.strategy,
            self.task_name,
            key,
            raw,
            self.cleanup,
            self.spec.writes_rationale,
            extra,
        )


@dataclass
class _Asked:
    """One question as the teacher is asked it: the prompt, the whole prompt it sees (chat
    template applied) and the output's cache key."""

    prompt: str
    full: str
    key: str


def _ask(lesson: _Lesson, example: Example, pool: list[Example], k_shots: int, seed: int, budget: int | None) -> _Asked:
    """Build one question's prompt (fitted to `budget`) and its cache key; counts a cut prompt."""
    teacher = lesson.teacher
    shots = draw_shots(example, pool, k_shots, seed) if lesson.spec.uses_shots else []
    prompt, cut = _fitted_prompt(teacher, lesson.spec, example, shots, budget, lesson.evidence)
    lesson.summary.truncated += cut is not None
    full = teacher.full_prompt(prompt)
    key = cache.cache_key(
        teacher=teacher.identity,
        backend=teacher.cache_fields(),
        prompt=full,
        settings=lesson.settings.cache_fields(),
        task=lesson.task_name,
        example=example.id,
        strategy=lesson.strategy,
    )
    return _Asked(prompt, full, key)


def _outputs_from_cache(lesson: _Lesson, asked: list[_Asked]) -> tuple[list[TeacherOutput | None], list[int]]:
    """The cached outputs (None where there is none) and the positions of the questions without one."""
    found = cache.fetch(lesson.store, [a.key for a in asked])
    outputs: list[TeacherOutput | None] = [None] * len(asked)
    missing = []
    for i, question in enumerate(asked):
        if question.key not in found:
            missing.append(i)
            continue
        output = _cleaned_again(lesson, i, question.key, cache.to_output(found[question.key]))
        outputs[i] = output
        lesson.count("cached", output)
    return outputs, missing


def _cleaned_again(lesson: _Lesson, i: int, key: str, output: TeacherOutput) -> TeacherOutput:
    """A cached output cleaned by other clean-up settings, cleaned again from its raw text (no
    model call) and updated in the cache; otherwise the output as it is."""
    if output.meta.get("cleanup") == lesson.cleanup or "raw" not in output.meta:
        return output
    extra = {k: v for k, v in output.meta.items() if k not in ("raw", "cleanup")}
    output = lesson.output(i, key, output.meta["raw"], extra)
    cache.update_text(lesson.store, output)
    return output


def _generate_missing(
    lesson: _Lesson, asked: list[_Asked], missing: list[int], outputs: list[TeacherOutput | None]
) -> None:
    """Ask the teacher the `missing` questions, caching each output as it arrives."""
    summary = lesson.summary
    seeds = [_prompt_seed(lesson.settings.seed, asked[i].full) for i in missing]
    try:
        results = lesson.teacher.generate([asked[i].prompt for i in missing], lesson.settings, seeds)
        for position, result in results:
            i = missing[position]
            outputs[i] = _store_generated(lesson, i, asked[i], result)
    except TeacherUnavailable as err:
        raise TeacherUnavailable(
            f"{err}. {summary.generated} new output(s) were saved before it stopped "
            f"({summary.cached} were cached already); run the same command again "
            "to resume"
        ) from err


def _store_generated(lesson: _Lesson, i: int, asked: _Asked, result: GenerationResult) -> TeacherOutput | None:
    """Question `i`'s new output, cached; None (counted as failed, not cached) for an error or an
    empty text, so the next run asks again."""
    example_id = lesson.examples[i].id
    if isinstance(result, TeacherError):
        lesson.count("failed", None, f"{example_id}: {result}")
        return None
    if not result.text.strip():
        lesson.count("failed", None, f"{example_id}: the teacher's output was empty")
        return None
    output = lesson.output(i, asked.key, result.text, _generation_meta(result, lesson.settings))
    cache.save(lesson.store, output, asked.full)
    lesson.count("generated", output)
    return output


def _finish(
    summary: TeachSummary, kept: list[TeacherOutput], teacher: Teacher, calls_before: int, started: float
) -> TeachSummary:
    """Fill in the kept outputs, the model calls made since `calls_before` and the seconds since `started`."""
    summary.outputs = kept
    summary.kept = len(summary.outputs)
    summary.model_calls = teacher.calls - calls_before
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _generation_meta(generation: Generation, settings: GenerationSettings) -> dict:
    return {
        "finish_reason": generation.finish_reason,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "settings": settings.cache_fields(),
    }


def _score(
    teacher: Teacher,
    examples: Sequence[Example],
    task: str,
    store: Store,
    on_output: OnOutput | None = None,
    max_input_tokens: int | None = None,
    evidence: str = CUT,
) -> TeachSummary:
    """Choice log-likelihoods through the cache (lm-evaluation-harness prompts and choices)."""
    if any(ex.free_form for ex in examples):
        raise ValueError(f"{task} is free-form: its questions have no choices to score ({SCORING})")
    task_name = cache.task_key(task)
    style = prompt_style(task, list(examples))
    fitted = _fitted_examples(teacher, examples, style, max_input_tokens, evidence)
    requests = [
        ChoiceRequest(choice_context(f.example, style), choice_continuations(ex)) for f, ex in zip(fitted, examples)
    ]
    keys = [
        cache.cache_key(
            teacher=teacher.identity,
            backend=teacher.cache_fields(),
            prompt=r.context,
            continuations=r.continuations,
            task=task_name,
            example=ex.id,
            strategy=SCORING,
        )
        for ex, r in zip(examples, requests)
    ]
    summary = TeachSummary(
        teacher=cache.teacher_key(teacher.name),
        task=task_name,
        strategy=SCORING,
        n=len(examples),
        truncated=sum(f.cut is not None for f in fitted),
    )
    started, calls_before = time.perf_counter(), teacher.calls
    found = cache.fetch(store, keys)
    outputs: list[TeacherOutput | None] = [None] * len(examples)
    for i, key in enumerate(keys):
        if key in found:
            outputs[i] = cache.to_output(found[key])
            summary._count("cached", outputs[i], on_output=on_output)
    missing = [i for i, key in enumerate(keys) if key not in found]
    try:
        for position, result in teacher.score_choices([requests[i] for i in missing]):
            i = missing[position]
            if isinstance(result, TeacherError):
                summary._count("failed", None, f"{examples[i].id}: {result}", on_output=on_output)
                continue
            best = max(range(len(result)), key=lambda c: result[c])
            output = TeacherOutput(
                teacher=summary.teacher,
                example_id=examples[i].id,
                strategy=SCORING,
                text=None,
                answer=best,
                choice_logprobs=list(result),
                matches_gold=best == examples[i].answer,
                cache_key=keys[i],
                task=task_name,
                meta={"style": style, "identity": teacher.identity},
            )
            cache.save(store, output, requests[i].context)
            outputs[i] = output
            summary._count("generated", output, on_output=on_output)
    except TeacherUnavailable as err:
        raise TeacherUnavailable(
            f"{err}. {summary.generated} new score(s) were saved before it stopped; "
            "run the same command again to resume"
        ) from err
    return _finish(summary, [o for o in outputs if o is not None], teacher, calls_before, started)


def _fitted_examples(
    teacher: Teacher, examples: Sequence[Example], style: str, max_input_tokens: int | None, evidence: str = CUT
) -> list[Fitted]:
    """Examples whose scoring prompt, with room for the longest choice, fits the teacher."""
    budget = input_budget(teacher, max_input_tokens)
    if budget is None:
        return [Fitted(ex, None, 0) for ex in examples]
    count = lambda text: teacher.count_tokens(text) or 0  # noqa: E731
    render = lambda e: choice_context(e, style)  # noqa: E731
    return [
        fit_example(
            ex, render, count, teacher.tokenizer, budget - max(count(c) for c in choice_continuations(ex)), evidence
        )
        for ex in examples
    ]


def teacher_choice_logprobs(
    teacher: Teacher,
    examples: Sequence[Example],
    task: str,
    store: Store,
    allow_generative: bool = True,
    max_input_tokens: int | None = None,
    evidence: str = CUT,
) -> dict[str, list[float]]:
    """Log-likelihood of each choice per question id, cached (for choice-level distillation and
    for measuring a teacher).

    When the backend cannot score (a server without echo + logprobs) and `allow_generative` is on,
    the teacher answers zero-shot instead and its answer becomes a hard distribution: 0.0 for the
    choice it named and -inf for the others (questions it gave no readable answer for are left
    out). Mind the -inf when computing a KL divergence. Otherwise ScoringUnsupported is raised.
    """
    try:
        summary = _score(teacher, examples, task, store, max_input_tokens=max_input_tokens, evidence=evidence)
    except ScoringUnsupported as err:
        if not allow_generative:
            raise
        warn(f"{err}; using the teacher's zero-shot answers as hard labels instead")
        answers = teach(
            teacher,
            examples,
            task,
            "zero_shot",
            store,
            max_new_tokens=8,
            max_input_tokens=max_input_tokens,
            evidence=evidence,
        )
        by_id = {ex.id: ex for ex in examples}
        return {
            o.example_id: [0.0 if c == o.answer else -math.inf for c in range(len(by_id[o.example_id].choices))]
            for o in answers.outputs
            if o.answer is not None
        }
    if summary.failed:
        warn(f"{summary.failed} question(s) could not be scored: {summary.errors[:3]}")
    return {o.example_id: o.choice_logprobs for o in summary.outputs}  # type: ignore[misc]  # a scored output holds its scores


def rationales_for_training(store: Store, teacher: str, task: str, free_form: bool, strategy: str | None = None):
    """The rationales a student learns from: all of them on a multiple-choice task (TinyLLM keeps
    them all), only those whose final answer is the gold one on a free-form task (a worked solution
    that reaches another number teaches the wrong arithmetic); the ones left out are counted and
    said."""
    found = load_rationales(store, teacher, task, strategy)
    if not free_form or not found:
        return found
    kept = load_rationales(store, teacher, task, strategy, only_matching=True)
    if len(kept) < len(found):
        warn(
            f"teacher {teacher!r}: {len(found) - len(kept)} of {len(found)} rationales left out, their final answer "
            "is not the gold one (free-form task)"
        )
    return kept


def load_rationales(
    store: Store, teacher: str, task: str, strategy: str | None = None, only_matching: bool = False
) -> dict[str, str]:
    """Rationales in the cache (generated or imported) by question id.

    Args:
        teacher: the teacher's name (`flan-t5-xl`, `llama-2-chat-7b`, a model name).
        task: the task's name or path, as given to `teach` or the import.
        strategy: one strategy only; default: any rationale strategy (`cot`,
            `teacher_forcing_cot`, `imported`), the most recent output per question winning.
        only_matching: only rationales whose stated answer is the gold one.
    """
    rows = cache.rows_for(store, teacher, task, strategy)
    allowed = (strategy,) if strategy else RATIONALE_STRATEGIES
    found: dict[str, str] = {}
    for row in rows:  # oldest first, so the newest output per question wins
        if row["strategy"] in allowed and row["text"] and (not only_matching or row["matches_gold"] == 1):
            found[row["example_id"]] = row["text"]
    return found
