"""Setting up one student for training: model, LoRA, teachers (`teacher_models`), objectives,
optimizer, schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tinystudent.distill.config import TrainConfig
from tinystudent.distill.data import build_features, choice_batch, teacher_choice_table, token_batch
from tinystudent.distill.lora import apply_lora
from tinystudent.distill.objectives import StudentBatch, StudentObjectives
from tinystudent.distill.teacher_models import FrozenTeacher, load_teachers, named_teachers, teacher_tokens
from tinystudent.distill.teacher_models import hidden_pairs as hidden_pairs  # where callers found them first
from tinystudent.distill.teacher_models import load_teacher as load_teacher
from tinystudent.distill.terms import CHOICE_LOGPROBS, RATIONALES, BatchNeeds, TermWeights, teachers_of, terms
from tinystudent.distill.terms.onpolicy_kd import sampled_rows, student_continuations
from tinystudent.log import info
from tinystudent.models.batches import Features, TokenBatch
from tinystudent.models.generation import prompt_seed
from tinystudent.models.kinds import ModelKind
from tinystudent.models.loading import LoadedModel, load_model
from tinystudent.models.params import count_parameters
from tinystudent.tasks.schema import Example

if TYPE_CHECKING:
    from tinystudent.distill.stored_logits import TeacherLogits


@dataclass(kw_only=True)
class Trainee:
    """One student being trained and everything that belongs to it."""

    name: str
    out_dir: Path
    loaded: LoadedModel  # the transformers model (LoRA injected) for evaluation and saving
    model: torch.nn.Module  # what is saved: the PEFT wrapper under LoRA, else the model
    objective: torch.nn.Module  # StudentObjectives, possibly wrapped for DDP
    features: dict[str, Features]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    counts: dict[str, int]
    trainable: int
    teachers: dict[str, FrozenTeacher] = field(default_factory=dict)
    kd_vocab: int | None = None  # logit entries every model of logit_kd shares (None: all)
    stored_logits: TeacherLogits | None = None  # the teacher's stored top-k logits (`stored_logits`)
    state: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)  # how many training inputs were cut to fit (evaluation.fit)

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    @property
    def teacher(self) -> FrozenTeacher | None:
        """The first teacher model, or None."""
        return next(iter(self.teachers.values()), None)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def warmup_cosine(total_steps: int, warmup_ratio: float, min_ratio: float):
    """Linear warm-up, then cosine decay to `min_ratio` of the peak, as a LambdaLR factor."""
    warmup = round(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(module: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019); biases and norms (1-d tensors) are not decayed."""
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else plain).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate, betas=config.betas)


def check_context(features: dict[str, Features], limit: int, budget: int, name: str) -> None:
    """Refuse inputs longer than the student takes (its context), before a step is taken: a budget
    (`max_input_tokens`) above the model's context fits nothing, and the first long input would
    end the run in the model's own error, or train positions it never learnt.

    Raises:
        ValueError: naming the student, its limit and the budget to lower."""
    longest = max((f.length for f in features.values()), default=0)
    if longest > limit:
        raise ValueError(
            f"student {name}: a training input is {longest} tokens, more than the {limit} it takes; "
            f"max_input_tokens={budget} is above its context: set training.max_input_tokens (or "
            f"task.max_input_tokens, or train --max-input-tokens) to at most {limit}"
        )


def setup_trainee(
    *,
    name: str,
    out_dir: Path,
    config: TrainConfig,
    train: list[Example],
    style: str,
    rationales: dict,
    choice_logprobs: dict,
    teacher,
    device: torch.device,
    total_steps: int,
    weights: TermWeights,
) -> Trainee:
    """Load a student, report its size, add LoRA if asked, and build its objectives."""
    loaded = load_model(name, device=device, dtype="float32")
    counts = count_parameters(loaded.model)
    info(
        f"student {name} ({loaded.kind}): {counts['total']:,} parameters, "
        f"{counts['non_embedding']:,} non-embedding, {counts['embedding']:,} embedding"
    )
    core = loaded.model
    loaded.adapter.check_output_layer(core, name)
    loaded.adapter.check_training_task(core, train)
    kd_dtype = resolve_precision(config.precision, device)
    teacher_info, kd_vocab, student_layers = load_teachers(
        named_teachers(teacher), loaded, config, device, kd_dtype, weights
    )
    feature_args = dict(
        style=style,
        rationales=rationales,
        choice_logprobs=choice_logprobs,
        rationale_prompt=config.rationale_prompt,
        max_input=config.max_input_tokens,
        max_answer=config.max_answer_tokens,
        max_rationale=config.max_rationale_tokens,
        evidence=config.evidence,
    )
    for frozen in teacher_info.values():  # the same texts in a cross-tokenizer teacher's own tokens
        if frozen.own_tokens:
            t = frozen.loaded
            frozen.features = build_features(train, t.tokenizer, kind=t.kind, **feature_args)[0]  # type: ignore[arg-type]
    model = core
    if config.method == "lora":
        lora = config.lora
        model = apply_lora(core, loaded.kind, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
    if config.attention_dropout is not None:
        set_attention_dropout(core, config.attention_dropout)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(core)
    core.config.use_cache = False  # type: ignore[union-attr]  # a transformers config, via Module.__getattr__
    core.train()
    features, fitted = build_features(train, loaded.tokenizer, kind=loaded.kind, **feature_args)  # type: ignore[arg-type]
    if fitted["truncated"]:
        info(
            f"{fitted['truncated']} of {len(train)} training inputs were longer than "
            f"{config.max_input_tokens} tokens: their evidence was shortened ({config.evidence}), their question kept"
        )
    check_context(features, loaded.input_limit, config.max_input_tokens, name)
    objective = StudentObjectives(
        model,
        loaded.kind,
        weights=weights,
        temperature=config.temperature,
        divergence=config.logit_kd_divergence,
        jsd_beta=config.jsd_beta,
        chunk_tokens=config.kd_chunk_tokens,
        kd_vocab=kd_vocab,
        hidden_layers=student_layers,
        answer_loss=config.answer_loss,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info(f"training {trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters ({config.method})")
    optimizer = make_optimizer(objective, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, config.warmup_ratio, config.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler(device.type) if kd_dtype == torch.float16 else None
    student = LoadedModel(core, loaded.tokenizer, loaded.kind, loaded.resolved, device)
    return Trainee(
        name=name,
        out_dir=out_dir,
        loaded=student,
        model=model,
        objective=objective,
        features=features,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        counts=counts,
        trainable=trainable,
        teachers=teacher_info,
        kd_vocab=kd_vocab,
        fit=fitted,
    )


def set_attention_dropout(core, p: float) -> int:
    """Set the dropout on attention probabilities (the `dropout` of every *Attention module, and
    the config fields that hold it); returns how many modules changed."""
    changed = 0
    for module in core.modules():
        dropout = getattr(module, "dropout", None)
        if type(module).__name__.endswith("Attention") and isinstance(dropout, torch.nn.Dropout):
            dropout.p = p
            changed += 1
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            changed += 1
    for key in ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"):
        if hasattr(core.config, key):
            setattr(core.config, key, p)
    return changed


def enable_activation_checkpointing(core) -> None:
    """Recompute activations in backward, under the method name the installed transformers uses
    (`activation_checkpointing_enable` from 5.2x, `gradient_checkpointing_enable` before)."""
    kwargs = {"use_reentrant": False}
    if hasattr(core, "activation_checkpointing_enable"):
        core.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        core.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def batch_needs(weights: TermWeights, adapter: ModelKind, answer_loss: str) -> BatchNeeds:
    """What a batch carries for the active terms (`Term.needs`). A student without a next-token
    distribution (an encoder) learns from its choices only; one with it reads its answer off the
    choices' pass when the batch scores the choices anyway and no teacher model needs the answer
    tokens."""
    needs = BatchNeeds(choices=not adapter.next_token)
    for found in terms():
        if weights.active(found.name):
            needs = needs | found.needs(adapter, answer_loss)
    teacher_run = needs.teacher_states or needs.teacher_tokens
    answer_tokens = (
        adapter.next_token and (needs.answer_tokens or teacher_run) and not (needs.choices and not teacher_run)
    )
    return replace(needs, answer_tokens=answer_tokens)


Pair = tuple[list[int], list[int]]


def _data_rows(
    trainee: Trainee, examples: list[Example], config: TrainConfig, weights: TermWeights, position: int
) -> tuple[dict[str, list[Pair]], dict[str, list[str]], list[int]]:
    """(each token batch of the data's (prompt, target) pairs, the questions of its pairs in order,
    the rows whose answer the student writes itself: on-policy KD, drawn as `make_batch` says)."""
    items = [trainee.features[ex.id] for ex in examples]
    needs = batch_needs(weights, trainee.loaded.adapter, config.answer_loss)
    pairs: dict[str, list[Pair]] = {}
    texts: dict[str, list[str]] = {}
    own: list[int] = []
    if needs.answer_tokens:
        own = sampled_rows(len(items), config.onpolicy_lambda, config.seed, position) if needs.student_samples else []
        gold = [i for i in range(len(items)) if i not in own]
        if gold:  # the rows that keep their gold answer
            pairs["answer"] = [(items[i].prompt, items[i].choices[items[i].gold]) for i in gold]
            texts["answer"] = [examples[i].id for i in gold]
    for teacher in teachers_of(weights, RATIONALES) if needs.rationales else []:
        found = [(ex.id, f.rationales[teacher]) for ex, f in zip(examples, items) if teacher in f.rationales]
        if found:
            pairs[f"rationale:{teacher}"] = [pair for _, pair in found]
            texts[f"rationale:{teacher}"] = [i for i, _ in found]
    return pairs, texts, own


def token_pairs(
    trainee: Trainee, examples: list[Example], config: TrainConfig, weights: TermWeights, position: int = 0
) -> dict[str, list[Pair]]:
    """The (prompt, target) token pairs of each token batch of the data (`answer`: the rows that
    keep their gold answer, `rationale:<teacher>`) of `examples`, as `make_batch` lays them out at
    `position`; the student's own samples (on-policy KD) are not data and not among them."""
    return _data_rows(trainee, examples, config, weights, position)[0]


def make_batch(
    trainee: Trainee, examples: list[Example], config: TrainConfig, weights: TermWeights, position: int = 0
) -> StudentBatch:
    """The micro-batch of `examples` in this student's tokens, with what its terms need.

    Args:
        position: where the batch starts in the run's sample stream; it seeds the draw of the rows
            the student answers itself (on-policy KD) and their samples.
    """
    adapter = trainee.loaded.adapter
    tokenizer = trainee.loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    items = [trainee.features[ex.id] for ex in examples]
    batch = StudentBatch(torch.tensor([f.gold for f in items]))
    needs = batch_needs(weights, adapter, config.answer_loss)
    pairs, texts, own = _data_rows(trainee, examples, config, weights, position)  # texts: batch -> questions
    if "answer" in pairs:
        batch.answer = token_batch(pairs["answer"], adapter, pad, config.packing)
    if own:  # the student's own tokens: a teacher of another tokenizer has no reading of them
        batch.samples = student_samples(trainee, [items[i] for i in own], config, position, own)
    for teacher in teachers_of(weights, RATIONALES) if needs.rationales else []:
        if f"rationale:{teacher}" in pairs:
            batch.rationales[teacher] = token_batch(pairs[f"rationale:{teacher}"], adapter, pad, config.packing)
        read = [replace(f, context=f.rationale_contexts[teacher]) for f in items if teacher in f.rationale_contexts]
        if read:
            answers = torch.tensor([f.gold for f in read])
            batch.rationale_inputs[teacher] = (
                choice_batch(read, adapter, pad, tokenizer, config.max_input_tokens),
                answers,
            )
    if needs.choices:
        batch.choices = choice_batch(items, adapter, pad, tokenizer, config.max_input_tokens)
        width = batch.choices.choice_mask.shape[1]
        for teacher in teachers_of(weights, CHOICE_LOGPROBS) if needs.teacher_choice else []:
            batch.teacher_choice[teacher] = teacher_choice_table(items, teacher, width)
    if needs.teacher_tokens:
        batch.teacher_tokens = teacher_tokens(trainee.teachers, trainee.features, adapter, texts, config.packing)
    return batch


def student_samples(
    trainee: Trainee, items: list[Features], config: TrainConfig, position: int, rows: list[int]
) -> TokenBatch:
    """The answer prompts of `items`, each followed by a continuation the student samples itself
    (`terms.onpolicy_kd`), as a token batch whose targets are the continuations; each row's seed
    comes from the run's seed, the batch's position and the row."""
    loaded = trainee.loaded
    prompts = [f.prompt for f in items]
    seeds = [prompt_seed(config.seed, f"onpolicy sample:{position}:{row}") for row in rows]
    written = student_continuations(
        loaded.model,
        loaded.tokenizer,
        loaded.adapter,
        prompts,
        max_new_tokens=config.onpolicy_max_new_tokens,
        temperature=config.onpolicy_temperature,
        seeds=seeds,
        context=loaded.input_limit,
    )
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    return token_batch(list(zip(prompts, written)), loaded.adapter, pad, config.packing)
