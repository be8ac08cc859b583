"""Measure one model on one task split: accuracy, interval, baseline and cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tinystudent.evaluation.cost import LatencyMeter, MemoryMeter, model_cost
from tinystudent.evaluation.generative import (extract_choice, generate_texts, generative_prompt,
                                               render_prompt)
from tinystudent.evaluation.prompts import choice_context, choice_continuations, prompt_style
from tinystudent.evaluation.scoring import (ChoiceRequest, score_choices,
                                            score_choices_encoder)
from tinystudent.evaluation.stats import accuracy, bootstrap_ci, majority_baseline
from tinystudent.models.loading import LoadedModel
from tinystudent.tasks.schema import Example, data_hash

MODES = ("loglikelihood", "generate", "generate_cot")


@dataclass
class Prediction:
    example_id: str
    gold: int
    pred: int | None
    pred_norm: int | None
    choice_logprobs: list[float] | None = None
    text: str | None = None

    @property
    def correct(self) -> bool:
        return self.pred == self.gold


@dataclass
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

    def summary(self) -> dict:
        """The flat JSON object `tinystudent eval --json` prints."""
        row = {k: v for k, v in asdict(self).items() if k not in ("predictions", "cost", "settings")}
        row.update(self.cost)
        row["acc"], row["ci95"] = round(self.acc, 4), [round(x, 4) for x in self.ci95]
        row["acc_norm"] = None if self.acc_norm is None else round(self.acc_norm, 4)
        return row


def _argmax(values: list[float]) -> int:
    return int(np.argmax(values))


def _loglikelihood_predictions(loaded: LoadedModel, examples: list[Example], style: str,
                               batch_size: int, latency: LatencyMeter) -> list[Prediction]:
    requests = [ChoiceRequest(choice_context(ex, style), choice_continuations(ex)) for ex in examples]
    if loaded.kind == "encoder":
        scores = score_choices_encoder(loaded.model, loaded.tokenizer, requests, batch_size,
                                       on_batch=latency.record)
    else:
        scores = score_choices(loaded.model, loaded.tokenizer, loaded.kind, requests, batch_size,
                               loaded.device, on_batch=latency.record)
    predictions = []
    for ex, row in zip(examples, scores):
        # acc_norm divides by the choice's length in characters (without the leading space).
        normed = [s / max(len(c), 1) for s, c in zip(row, ex.choices)]
        predictions.append(Prediction(ex.id, ex.answer, _argmax(row), _argmax(normed), row))
    return predictions


def _generative_predictions(loaded: LoadedModel, examples: list[Example], think: bool,
                            batch_size: int, latency: LatencyMeter) -> list[Prediction]:
    prompts = [render_prompt(loaded.tokenizer, generative_prompt(ex, think)) for ex in examples]
    texts = generate_texts(loaded.model, loaded.tokenizer, loaded.kind, prompts,
                           max_new_tokens=256 if think else 8, batch_size=batch_size,
                           on_batch=latency.record)
    predictions = []
    for ex, text in zip(examples, texts):
        pick = extract_choice(text, ex.choices)
        predictions.append(Prediction(ex.id, ex.answer, pick, pick, None, text))
    return predictions


def evaluate_model(loaded: LoadedModel, examples: list[Example], task: str, split: str,
                   mode: str = "loglikelihood", batch_size: int = 16) -> EvalResult:
    """Score `examples` with `loaded` and measure its cost on the way.

    Args:
        mode: `loglikelihood` (each choice as a continuation), `generate` (answer with a letter)
            or `generate_cot` (think step by step, then answer); encoders support only the first.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "loglikelihood" and loaded.kind == "encoder":
        raise ValueError(f"{loaded.name} is an encoder: it can only score choices (mode loglikelihood)")
    style = prompt_style(task, examples)
    memory, latency = MemoryMeter(loaded.device), LatencyMeter()
    with memory.measure():
        if mode == "loglikelihood":
            predictions = _loglikelihood_predictions(loaded, examples, style, batch_size, latency)
        else:
            predictions = _generative_predictions(loaded, examples, mode == "generate_cot",
                                                  batch_size, latency)
    correct = [p.correct for p in predictions]
    has_norm = mode == "loglikelihood" and loaded.kind != "encoder"
    return EvalResult(
        model=loaded.name, task=task, split=split, n=len(examples), acc=accuracy(correct),
        acc_norm=accuracy([p.pred_norm == p.gold for p in predictions]) if has_norm else None,
        ci95=list(bootstrap_ci(correct)), majority_baseline=majority_baseline(examples)["acc"],
        mode=mode, cost=model_cost(loaded.model, loaded.resolved.path, memory, latency, batch_size),
        data_hash=data_hash(examples),
        settings={"prompt_style": style, "batch_size": batch_size, "model_kind": loaded.kind,
                  "model_identity": loaded.resolved.identity, "model_source": loaded.resolved.source},
        predictions=predictions, unparsed=sum(p.pred is None for p in predictions),
    )
