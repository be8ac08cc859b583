"""The one typed config of a training run. Unknown keys are errors, never silently ignored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tinystudent.distill import terms as registry
from tinystudent.distill.terms import TermWeights
from tinystudent.hashing import stable_hash


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Bounds no study means to cross: a seed numpy and torch both take, and ceilings on how long a run
# trains, far above any study (the shipped ones: at most 3 epochs or 16 steps), so that a typo
# (`epochs: 1000000`) is an error at --check, not weeks of training.
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 10_000
MAX_STEPS = 10_000_000
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class ObjectiveWeights(_Strict):
    """Weights of the objective's terms (`distill.terms`); a term with weight 0 is not computed.

    `L = answer * L_answer + sum_m rationale_m * L_rationale_m + sum_m choice_kd_m * L_choice_m
    + logit_kd * L_logit + hidden * L_hidden (+ mutual * L_mutual in mutual learning)`, and any
    registered term beside them. Every registered term has a weight, its default unless given
    (answer 1.0, mutual 1.0, the others 0.0); a term learnt per teacher takes one weight for every
    teacher or teacher name -> weight. Unknown names are errors naming the terms. A term that is not
    built in is stored (and so keys a run) only when given, so adding one changes no stored key.

    The built-in terms: answer (cross-entropy on the gold answer, in exactly the format evaluation
    scores), rationale (per-teacher rationale cross-entropy: TinyLLM; distilling step by step),
    choice_kd (per-teacher KL between the teacher's and the student's distributions over the
    choices), logit_kd (token-level distillation from the teacher models' next-token
    distribution, several averaged; one weight, or teacher model -> weight),
    hidden (hidden-state matching between chosen layers: patient KD), mutual (KL
    towards the peers' choice distributions, in `train_mutual`). `onpolicy_kd` (the divergence on
    the student's own answers, GKD; weighted like logit_kd) and `uld_kd` (cross-tokenizer) are
    registered beside them.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    if TYPE_CHECKING:  # each registered term is an attribute: float, or teacher -> float

        def __getattr__(self, name: str) -> Any: ...

    @model_validator(mode="before")
    @classmethod
    def _registered_terms(cls, data):
        if isinstance(data, ObjectiveWeights):
            data = data.model_dump()
        if not isinstance(data, dict):
            raise ValueError(f"weights must map objective terms to weights, got {data!r}")
        known = {found.name: found for found in registry.terms()}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"unknown objective term(s) {unknown} in weights (extra inputs are not permitted): "
                f"the terms are {', '.join(known)}"
            )
        weights: dict = {}
        for name, found in known.items():
            if name not in data and not registry.built_in(name):
                continue  # at its default: a new term changes no stored key until it is used
            value = data.get(name, found.default_weight)
            found.check_weight(value)
            weights[name] = {k: float(v) for k, v in value.items()} if isinstance(value, dict) else float(value)
        return weights

    def of(self, name: str) -> float | dict[str, float]:
        """The weight of term `name` as configured (one number, or teacher -> number)."""
        found = registry.term(name)
        return (self.model_extra or {}).get(found.name, found.default_weight)

    def configured(self, name: str) -> bool:
        """Whether term `name` is on: a weight above 0, or a non-empty per-teacher table."""
        value = self.of(name)
        return bool(value) if isinstance(value, dict) else value > 0

    def resolve(self, with_data: dict[str, list[str]], mutual: bool = False) -> TermWeights:
        """The run's weights: per-teacher terms spread over the teachers with data (a table naming
        a teacher without data is an error), zero weights and peers' terms outside mutual learning
        left out.

        Args:
            with_data: `Term.teacher_data` (rationales, choice_logprobs, teacher_models) -> the
                teachers that have it.
        """
        values: dict[str, float | dict[str, float]] = {}
        for found in registry.terms():
            value = self.of(found.name)
            if found.with_peers and not mutual:
                continue
            if found.per_teacher:
                teachers = with_data.get(found.teacher_data or "", [])
                if isinstance(value, dict):
                    unknown = sorted(set(value) - set(teachers))
                    if unknown and found.teacher_data == registry.TEACHER_MODELS:
                        raise ValueError(
                            f"weights.{found.name} names teacher model(s) {unknown} that were not given; the "
                            f"teacher models are {sorted(teachers)} (give each as --teacher-model NAME=PATH)"
                        )
                    if unknown:
                        raise ValueError(
                            f"weights.{found.name} names teacher(s) {unknown} with no data; "
                            f"teachers with data: {sorted(teachers)}"
                        )
                    table = {t: w for t, w in value.items() if w > 0}
                else:
                    table = {t: float(value) for t in teachers} if value > 0 else {}
                if table:
                    values[found.name] = table
            elif not isinstance(value, dict) and value > 0:
                values[found.name] = float(value)
        return TermWeights(values)


class LoraSettings(_Strict):
    """LoRA (Hu et al. 2021) through PEFT. Each field's description is its documentation and the
    help of its `tinystudent train --lora-...` option."""

    rank: int = Field(8, ge=1, description="LoRA rank r of the update.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Module name suffixes to adapt (comma-separated on the command line), or all-linear: every "
        "linear layer but the output head. Each name must match at least one module.",
    )
    merge: bool = Field(
        False,
        description="Save the best checkpoint as a plain model with the adapter merged in, instead of the "
        "adapter folder (which load_model reads onto its base model).",
    )


class TrainConfig(_Strict):
    """Everything that decides a training run (saved beside every checkpoint).

    Each field's description is its documentation and the help of its `tinystudent train` option
    (`commands.options` turns the fields into options); "unset" means the field is None.
    """

    weights: ObjectiveWeights = Field(
        default_factory=ObjectiveWeights,
        description="Objective weights (see ObjectiveWeights); on the command line, --objective and --weight.",
    )
    method: Literal["full", "lora"] = Field("full", description="full fine-tuning or lora.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings, used when method is lora.")
    answer_loss: Literal["tokens", "choices"] = Field(
        "tokens",
        description="How the answer term is computed for causal and seq2seq students: tokens, cross-entropy on "
        "the gold answer's tokens (a language-modelling loss on the answer text); or choices, cross-entropy of "
        "the gold choice under the student's distribution over the choices (softmax of each choice's summed "
        "log-likelihood, the score evaluation ranks by), which trains the decision itself. Encoder students "
        "always use choices.",
    )
    lr: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Peak learning rate, between 0 and 1; unset: 5e-5 for full fine-tuning, 2e-4 for LoRA.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Share of the steps spent warming the learning rate up linearly."
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="The cosine decay ends at lr * min_lr_ratio.")
    steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description=f"Optimizer steps, at most {MAX_STEPS:,}; unset: epochs decides."
    )
    epochs: float = Field(
        1.0,
        gt=0,
        le=MAX_EPOCHS,
        description=f"Passes over the training questions when steps is unset, at most {MAX_EPOCHS:,}.",
    )
    batch_size: int = Field(8, ge=1, description="Questions per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto (bf16 on a GPU that has it, fp16 on other GPUs, fp32 on the CPU), fp32, or bf16 or "
        "fp16 autocast; master weights stay in fp32.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    # 0 on a 2-core CPU: a MiniLM trains 1.8x faster at 256 tokens (`bench/bench_training.py`).
    attention_dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Dropout on the attention probabilities while training; unset keeps the model's own "
        "(BERT/MiniLM: 0.1). 0 lets the fused attention kernels run, which trains faster on a CPU.",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description=f"Seed of initialisation, data order and dropout, 0 to {MAX_SEED:,}."
    )
    temperature: float = Field(
        2.0, gt=0, description="Softening temperature of choice-level and token-level KD and of mutual learning."
    )
    logit_kd_divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl",
        description="Divergence of logit_kd and onpolicy_kd; jsd is the generalized Jensen-Shannon divergence "
        "(GKD); on-policy KD is usually run with reverse_kl (MiniLLM) or jsd.",
    )
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="The JSD's mixing weight beta.")
    onpolicy_lambda: float = Field(
        0.5,
        ge=0,
        le=1,
        description="onpolicy_kd: the share of training rows whose answer the student writes itself (each row "
        "drawn with this probability); the others keep their gold answer. 0 is KD on the gold answers only, "
        "1 fully on-policy (GKD's lambda).",
    )
    onpolicy_max_new_tokens: int = Field(
        64, ge=1, description="onpolicy_kd: most tokens the student writes per sampled row."
    )
    onpolicy_temperature: float = Field(
        1.0,
        ge=0,
        description="onpolicy_kd: sampling temperature of the student's own answers (0: greedy); the "
        "divergence is softened by temperature.",
    )
    # On an H100 with a Qwen2.5-0.5B-shaped student, 256 trains at 0.81x the tokens/s of 4096 and
    # 1024 at 0.95x, for 0.67x and 0.73x of its peak memory.
    kd_chunk_tokens: int = Field(
        1024,
        ge=1,
        description="Token-level losses are computed this many target tokens at a time, so peak memory does "
        "not grow with batch x tokens x vocabulary.",
    )
    teacher_logits_top_k: int | None = Field(
        None,
        ge=1,
        description="logit_kd from the teacher's top-k log-probabilities per target token (and the rest as one "
        "tail), computed once per training sequence before training and stored in the results database (--db): a "
        "second student or a resumed run reads them instead of running the teacher; unset: the live teacher. One "
        "teacher model, for logit_kd (hidden still runs it): several teachers' mixture needs their whole "
        "distributions, and onpolicy_kd and uld_kd need the live teacher (refused).",
    )
    teacher_logits_dtype: Literal["float16", "float32"] = Field(
        "float16", description="How stored teacher log-probabilities are kept (teacher_logits_top_k)."
    )
    hidden_layers: list[tuple[int, int]] | None = Field(
        None,
        description="(student layer, teacher layer) pairs for hidden-state matching; unset: a scaled-down "
        "student's kept layers map to the layers they were copied from.",
    )
    rationale_prompt: str = Field(
        "Rationale ({teacher}):\n{question}\nExplanation:",
        description="The rationale task's input; {teacher} and {question} (the question with lettered choices) "
        "are filled in, so each teacher's task has its own prefix.",
    )
    max_input_tokens: int = Field(
        256,
        ge=8,
        description="Every input is fitted to this many tokens (the answer task's prompt and choice, a "
        "cross-encoder's pair, a rationale task's prompt): the evidence is shortened first (see evidence), the "
        "question and choices are kept (evaluation.fit).",
    )
    group_by_length: bool = Field(
        False,
        description="Batch training questions of similar input length together (each epoch still a seeded "
        "permutation of all of them), so less of each batch is padding: faster for encoders reading long inputs.",
    )
    evidence: Literal["cut", "select"] = Field(
        "cut",
        description="How evidence longer than max_input_tokens is shortened, in training and in the "
        "validation and test passes: cut (its end is cut) or select (the sentences most related to the "
        "question are kept, in their order; BM25).",
    )
    # The loss is the same either way (`tests/distill/test_packing.py`).
    packing: bool = Field(
        True,
        description="A causal student's answer and rationale sequences share rows, positions restarting per "
        "sequence and attention kept within each, instead of each padded to the longest.",
    )
    max_answer_tokens: int = Field(32, ge=1, description="Answer continuations are cut to this many tokens.")
    max_rationale_tokens: int = Field(128, ge=1, description="Rationales are cut to this many tokens.")
    eval_every: int | None = Field(
        None, ge=1, description="Evaluate on the validation examples every N steps; unset: only at the end."
    )
    eval_before: bool = Field(True, description="Evaluate the untrained student first.")
    eval_batch_size: int = Field(16, ge=1, description="Questions per evaluation batch.")
    valid_limit: int | None = Field(
        None, ge=1, description="Evaluate on the first N validation examples only; unset: all."
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="Save a resumable checkpoint every N steps; unset: never."
    )
    keep_checkpoints: int = Field(2, ge=1, description="How many resumable checkpoints to keep.")
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without a better validation accuracy; unset: never.",
    )
    log_every: int = Field(10, ge=1, description="Steps over which the reported train loss is averaged.")
    device: str = Field("auto", description="auto, cpu or cuda; under accelerate launch each process gets its own GPU.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "max_prompt_tokens" in data:
            raise ValueError(
                "max_prompt_tokens was renamed max_input_tokens (inputs are now fitted by "
                "cutting their evidence, never their question)"
            )
        return data

    @model_validator(mode="after")
    def _prompt_fields(self):
        if "{question}" not in self.rationale_prompt:
            raise ValueError("rationale_prompt must contain {question}")
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-5 if self.method == "full" else 2e-4)

    def keyed(self) -> dict:
        """The config as it keys a run: everything but the device (it changes no number a user
        compares, only where it was computed); the on-policy settings only when onpolicy_kd is on
        and the stored-logits fields only when they are on, so that adding them changed no stored
        key of the runs that do not use them."""
        unused = set() if self.weights.configured("onpolicy_kd") else set(ONPOLICY_FIELDS)
        if self.teacher_logits_top_k is None:
            unused |= set(STORED_LOGITS_FIELDS)
        return self.model_dump(mode="json", exclude={"device", *unused})

    def fingerprint(self) -> str:
        """A short hash of everything in the config that keys a run (`keyed`)."""
        return stable_hash(self.keyed())


ONPOLICY_FIELDS = ("onpolicy_lambda", "onpolicy_max_new_tokens", "onpolicy_temperature")
STORED_LOGITS_FIELDS = ("teacher_logits_top_k", "teacher_logits_dtype")


class RecoveryConfig(_Strict):
    """Recovery of a layer-cut student by distillation from its parent on plain text
    (`distill.recover`).

    Attributes:
        steps: optimizer steps (40; at most MAX_STEPS).
        batch_size: text chunks per step (4).
        seq_len: tokens per chunk (128).
        lr: peak learning rate of AdamW, warm-up then cosine decay to a tenth (3e-4; below 1).
        warmup_ratio: share of the steps spent warming up (0.1).
        kd_weight: weight of the forward KL from the parent's next-token distribution (1.0).
        ce_weight: weight of the plain next-token cross-entropy on the text (0.0).
        temperature: softening temperature of the KL (1.0).
        chunk_tokens: positions whose logits are computed at a time (1024).
        checkpoint_every: resumable checkpoint every N steps (10).
        heldout_bytes: bytes of held-out text (the validation split's evidence) that bits per byte
            is measured on before and after (8000).
        extra_tasks: named tasks whose training split is added to the text, e.g. `sciq` (none).
        seed: seed of the chunk order (0; 0 to MAX_SEED).
    """

    steps: int = Field(40, ge=1, le=MAX_STEPS)
    batch_size: int = Field(4, ge=1)
    seq_len: int = Field(128, ge=8)
    lr: float = Field(3e-4, gt=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    kd_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(0.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    chunk_tokens: int = Field(1024, ge=1)
    checkpoint_every: int = Field(10, ge=1)
    heldout_bytes: int = Field(8000, ge=100)
    extra_tasks: list[str] = []
    seed: Seed = 0

    @model_validator(mode="after")
    def _something_to_learn(self):
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("recovery needs kd_weight or ce_weight above 0")
        return self
