"""Measure one model on one task split: accuracy, interval, baseline and cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from tinystudent.evaluation.cost import LatencyMeter, MemoryMeter, model_cost
from tinystudent.evaluation.fit import CUT, Fitted, check_strategy, fit_summary, fit_with_shots, token_counter
from tinystudent.evaluation.freeform import (
    EXTRACTIONS,
    INVALID,
    STOPS,
    Judged,
    cut_at_stops,
    free_form_prompt,
    gsm8k_exemplars,
    judge,
    shot_block,
    vote,
)
from tinystudent.evaluation.generative import extract_choice, generate_texts, generative_prompt, render_prompt
from tinystudent.evaluation.prompts import choice_context, choice_continuations, draw_shots, fewshot_block, prompt_style
from tinystudent.evaluation.scoring import score_choices
from tinystudent.evaluation.stats import accuracy, bootstrap_ci, majority_baseline
from tinystudent.models.loading import LoadedModel
from tinystudent.models.requests import ChoiceRequest
from tinystudent.tasks.schema import Example, data_hash, is_free_form

MODES = ("loglikelihood", "generate", "generate_cot", "self_consistency")
FREE_FORM_TOKENS = {True: 256, False: 32}  # new tokens: lm-eval's max_gen_toks with a chain of thought
GSM8K_SHOTS = gsm8k_exemplars()


@dataclass
class Prediction:
    """One question's answer. For a free-form question `gold` is the gold answer's text, `pred`
    the answer extracted strictly and `pred_norm` flexibly (`freeform`), `judged` both verdicts."""

    example_id: str
    gold: int | str
    pred: int | str | None
    pred_norm: int | str | None
    choice_logprobs: list[float] | None = None
    text: str | None = None
    judged: Judged | None = None

    @property
    def correct(self) -> bool:
        if self.judged is not None:
            return self.judged.strict_correct
        return self.pred == self.gold


@dataclass(kw_only=True)
class EvalResult:
    """What one evaluation measured."""

    model: str
    task: str
    split: str
    n: int
    acc: float
    acc_norm: float | None
    ci95: list[float]
    majority_baseline: float
    mode: str
    cost: dict
    data_hash: str
    settings: dict = field(default_factory=dict)
    predictions: list[Prediction] = field(default_factory=list)
    unparsed: int = 0
    truncated: int = 0  # inputs whose evidence (or question) was cut to fit (see `fit`)
    exact_match: dict | None = None  # free-form: {"strict"|"flexible": {"score", "ci95"}}; acc is strict

    def summary(self) -> dict:
        """The flat JSON object `tinystudent eval --json` prints."""
        row = {k: v for k, v in asdict(self).items() if k not in ("predictions", "cost", "settings")}
        row.update(self.cost)
        row["acc"], row["ci95"] = round(self.acc, 4), [round(x, 4) for x in self.ci95]
        row["acc_norm"] = None if self.acc_norm is None else round(self.acc_norm, 4)
        fit = self.settings.get("fit") or {}
        row["budget_tokens"], row["evidence"] = fit.get("budget_tokens"), fit.get("evidence")
        if self.exact_match is None:
            del row["exact_match"]
        return row


def _argmax(values: list[float]) -> int:
    return int(np.argmax(values))


@dataclass
class InputPlan:
    """How one evaluation turns examples into model inputs: the prompt style, the budget in
    tokens and how evidence is made to fit it, the in-context examples (few-shot) and what
    fitting cut."""

    style: str
    budget: int
    num_fewshot: int = 0
    shots_pool: list[Example] = field(default_factory=list)
    seed: int = 0
    evidence: str = CUT
    fitted: list[Fitted] = field(default_factory=list)
    sampling: Sampling | None = None  # self-consistency: several sampled answers, one vote

    def settings(self) -> dict:
        return {
            "prompt_style": self.style,
            "num_fewshot": self.num_fewshot,
            "fit": fit_summary(self.fitted, self.budget, self.evidence),
            **({"self_consistency": asdict(self.sampling)} if self.sampling else {}),
        }


@dataclass(frozen=True)
class Sampling:
    """Self-consistency (Wang et al. 2023): `samples` chains of thought sampled at `temperature`
    per question, their answers put to a majority vote."""

    samples: int = 8
    temperature: float = 0.7

    def __post_init__(self):
        if self.samples < 1 or not 0 < self.temperature <= 2:
            raise ValueError(f"self-consistency needs samples >= 1 and 0 < temperature <= 2, got {self}")


def _fit_prompts(
    loaded: LoadedModel,
    examples: list[Example],
    plan: InputPlan,
    reserve: Callable[[Example], int],
    render: Callable[[Example], str],
) -> list[str]:
    """Each example's prompt (after its in-context examples, when few-shot), its evidence cut to
    fit `plan.budget` minus `reserve(example)` (`fit`), its tokens counted as the model gets them."""
    count = token_counter(loaded.tokenizer, loaded.adapter.prompt_special_tokens)
    whole = lambda e, shots: "".join(fewshot_block(s, plan.style) for s in shots) + render(e)  # noqa: E731
    prompts = []
    for ex in examples:
        shots = draw_shots(ex, plan.shots_pool, plan.num_fewshot, plan.seed) if plan.num_fewshot else []
        fitted, shots = fit_with_shots(
            ex,
            shots,
            whole,
            lambda e: fewshot_block(e, plan.style),
            count,
            loaded.tokenizer,
            plan.budget - reserve(ex),
            plan.evidence,
        )
        plan.fitted.append(fitted)
        prompts.append(whole(fitted.example, shots))
    return prompts


def _loglikelihood_predictions(
    loaded: LoadedModel, examples: list[Example], plan: InputPlan, batch_size: int, latency: LatencyMeter
) -> list[Prediction]:
    tokenizer, adapter = loaded.tokenizer, loaded.adapter
    render = lambda ex: choice_context(ex, plan.style)  # noqa: E731
    reserve = lambda ex: adapter.choice_reserve(tokenizer, choice_continuations(ex))  # noqa: E731
    prompts = _fit_prompts(loaded, examples, plan, reserve, render)
    requests = [ChoiceRequest(p, choice_continuations(ex)) for p, ex in zip(prompts, examples)]
    scores = score_choices(
        loaded.model,
        tokenizer,
        adapter,
        requests,
        batch_size,
        loaded.device,
        on_batch=latency.record,
        max_length=plan.budget,
    )
    predictions = []
    for ex, row in zip(examples, scores):
        # acc_norm divides by the choice's length in characters (without the leading space).
        normed = [s / max(len(c), 1) for s, c in zip(row, ex.choices)]
        predictions.append(Prediction(ex.id, ex.answer, _argmax(row), _argmax(normed), row))
    return predictions


def _generative_predictions(
    loaded: LoadedModel, examples: list[Example], think: bool, plan: InputPlan, batch_size: int, latency: LatencyMeter
) -> list[Prediction]:
    max_new_tokens = 256 if think else 8
    render = lambda ex: render_prompt(loaded.tokenizer, generative_prompt(ex, think))  # noqa: E731
    prompts = _fit_prompts(loaded, examples, plan, lambda ex: max_new_tokens, render)
    texts = generate_texts(
        loaded.model,
        loaded.tokenizer,
        loaded.adapter,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_batch=latency.record,
    )
    predictions = []
    for ex, text in zip(examples, texts):
        pick = extract_choice(text, ex.choices)
        predictions.append(Prediction(ex.id, ex.answer, pick, pick, None, text))
    return predictions


def _free_form_shots(task: str, example: Example, plan: InputPlan) -> list[Example]:
    """GSM8K's few-shot exemplars are lm-eval's (the first `num_fewshot` of Wei et al.'s eight);
    any other free-form task draws its solved examples from the pool, seeded per question."""
    if not plan.num_fewshot:
        return []
    if task.split("/")[-1].removesuffix(".jsonl") == "gsm8k" and plan.num_fewshot <= len(GSM8K_SHOTS):
        return GSM8K_SHOTS[: plan.num_fewshot]
    return draw_shots(example, plan.shots_pool, plan.num_fewshot, plan.seed)


def _free_form_predictions(
    loaded: LoadedModel,
    examples: list[Example],
    task: str,
    think: bool,
    plan: InputPlan,
    batch_size: int,
    latency: LatencyMeter,
) -> list[Prediction]:
    """Generate greedily until lm-eval's stop sequences, extract and judge each answer
    (`freeform`). Prompts are plain text, never a chat template, as lm-eval's defaults."""
    max_new_tokens = FREE_FORM_TOKENS[think]
    # The prompt takes the input budget, less what the model's context must keep for the answer.
    prompt_budget = min(plan.budget, loaded.input_limit - max_new_tokens)
    if prompt_budget < 16:
        raise ValueError(
            f"{loaded.name} takes {loaded.input_limit} tokens: too few for a prompt and {max_new_tokens} new tokens"
        )
    count = token_counter(loaded.tokenizer, loaded.adapter.prompt_special_tokens)
    prompts = []
    for ex in examples:
        fitted, shots = fit_with_shots(
            ex,
            _free_form_shots(task, ex, plan),
            lambda e, shots: free_form_prompt(e, shots, think),
            lambda e: shot_block(e, think),
            count,
            loaded.tokenizer,
            prompt_budget,
            plan.evidence,
        )
        plan.fitted.append(fitted)
        prompts.append(free_form_prompt(fitted.example, shots, think))
    samples = _sampled_texts(loaded, prompts, max_new_tokens, batch_size, latency, plan.sampling)
    predictions = []
    for i, ex in enumerate(examples):
        texts = [cut_at_stops(sample[i]) for sample in samples]
        verdict = vote([judge(text, ex.answer_text) for text in texts], ex.answer_text)
        predictions.append(Prediction(ex.id, ex.answer_text, verdict.strict, verdict.flexible, None, texts[0], verdict))
    return predictions


def _sampled_texts(
    loaded: LoadedModel,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    latency: LatencyMeter,
    sampling: Sampling | None,
) -> list[list[str]]:
    """One greedy text per prompt, or `sampling.samples` sampled ones (self-consistency), each
    sample seeded per prompt. The time of the samples after the first is spread evenly over the
    questions, so each question's latency holds all of its samples."""
    passes = [None] if sampling is None else list(range(sampling.samples))

    def spread(_: int, seconds: float) -> None:
        for question in range(len(prompts)):
            latency.add(question, seconds / len(prompts))

    texts = []
    for n, seed in enumerate(passes):
        texts.append(
            generate_texts(
                loaded.model,
                loaded.tokenizer,
                loaded.adapter,
                prompts,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                do_sample=seed is not None,
                temperature=sampling.temperature if sampling else 1.0,
                seed=seed or 0,
                on_batch=latency.record if n == 0 else spread,
                stop=STOPS,
            )
        )
    return texts


def _exact_match(predictions: list[Prediction]) -> dict:
    """Strict and flexible exact match with their 95% intervals."""
    scores = {}
    for how in EXTRACTIONS:
        hits = [bool(getattr(p.judged, f"{how}_correct")) for p in predictions]
        scores[how] = {"score": round(accuracy(hits), 4), "ci95": [round(x, 4) for x in bootstrap_ci(hits)]}
    return scores


def evaluate_model(
    loaded: LoadedModel,
    examples: list[Example],
    task: str,
    split: str,
    *,
    mode: str = "loglikelihood",
    batch_size: int = 16,
    max_input_tokens: int | None = None,
    num_fewshot: int = 0,
    shots_pool: list[Example] | None = None,
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
    evidence: str = CUT,
    sampling: Sampling | None = None,
) -> EvalResult:
    """Score `examples` with `loaded` and measure its cost on the way.

    Args:
        mode: `loglikelihood` (each choice as a continuation), `generate` (answer with a letter)
            or `generate_cot` (think step by step, then answer); encoders support only the first.
        max_input_tokens: fit every input to this many tokens (default and at most: what the
            model takes); evidence is shortened first, the question and choices are kept (`fit`).
        num_fewshot: solved examples from `shots_pool` before each question (loglikelihood only),
            drawn per question from `seed`.
        on_progress: told the number of questions each batch answered.
        evidence: how evidence is shortened to fit: `cut` its end, or `select` the sentences most
            related to the question (`fit`).
        sampling: with mode `self_consistency`, how many chains of thought to sample per question
            and at what temperature (default `Sampling()`: 8 at 0.7).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    free_form = is_free_form(examples)
    if free_form and mode == "loglikelihood":
        raise ValueError(
            f"{task} has free-form answers (no choices to score): use mode generate_cot (think step by step, "
            "then answer), generate (answer at once) or self_consistency"
        )
    if mode == "self_consistency" and not free_form:
        raise ValueError("self_consistency votes over free-form answers (gsm8k, say); this task has choices")
    if mode != "loglikelihood" and not loaded.adapter.generates:
        raise ValueError(f"{loaded.name} is an {loaded.kind} model: it can only score choices (mode loglikelihood)")
    if free_form and num_fewshot and not shots_pool and task != "gsm8k":
        raise ValueError("few-shot prompts need a pool of solved examples (the task's train split)")
    if not free_form and num_fewshot and (mode != "loglikelihood" or not shots_pool):
        raise ValueError(
            "few-shot scoring needs mode loglikelihood and a pool of solved examples (the task's train split)"
        )
    limit = loaded.input_limit
    budget = min(max_input_tokens, limit) if max_input_tokens else limit
    plan = InputPlan(
        prompt_style(task, examples), budget, num_fewshot, list(shots_pool or []), seed, check_strategy(evidence)
    )
    if mode == "self_consistency":
        plan.sampling = sampling or Sampling()
    memory, latency = MemoryMeter(loaded.device), LatencyMeter(on_questions=on_progress)
    with memory.measure():
        if free_form:
            predictions = _free_form_predictions(
                loaded, examples, task, mode in ("generate_cot", "self_consistency"), plan, batch_size, latency
            )
        elif mode == "loglikelihood":
            predictions = _loglikelihood_predictions(loaded, examples, plan, batch_size, latency)
        else:
            predictions = _generative_predictions(loaded, examples, mode == "generate_cot", plan, batch_size, latency)
    correct = [p.correct for p in predictions]
    exact_match = _exact_match(predictions) if free_form else None
    # acc_norm divides a continuation's log-likelihood by its length: a cross-encoder's choice
    # scores are not summed over tokens.
    has_norm = mode == "loglikelihood" and loaded.adapter.next_token
    return EvalResult(
        model=loaded.name,
        task=task,
        split=split,
        n=len(examples),
        acc=accuracy(correct),
        acc_norm=accuracy([p.pred_norm == p.gold for p in predictions]) if has_norm else None,
        ci95=list(bootstrap_ci(correct)),
        majority_baseline=majority_baseline(examples)["acc"],
        mode=mode,
        cost={
            **model_cost(loaded.model, loaded.resolved.path, memory, latency, batch_size),
            "generations_per_question": plan.sampling.samples if plan.sampling else 1,
        },
        data_hash=data_hash(examples),
        settings={
            **plan.settings(),
            "batch_size": batch_size,
            "model_kind": loaded.kind,
            "model_identity": loaded.resolved.identity,
            "model_source": loaded.resolved.source,
            **({"exact_match": exact_match, "stop": list(STOPS)} if free_form else {}),
        },
        predictions=predictions,
        unparsed=sum(p.pred in (None, INVALID) for p in predictions),
        truncated=sum(f.cut is not None for f in plan.fitted),
        exact_match=exact_match,
    )
