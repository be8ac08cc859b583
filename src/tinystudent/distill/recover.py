"""Recovery: a layer-cut student first relearns language from the model it was cut from.

Cutting layers out of a pretrained model breaks its language modelling: SmolLM2-135M-Instruct
kept at 10 of its 30 layers predicts text worse than uniform guessing, and a few task steps
cannot repair that. Before it learns the task, the cut student is distilled from its parent on
plain text: at every position, the forward KL divergence from the parent's next-token
distribution to the student's (Hinton et al. 2015), optionally plus the ordinary next-token
cross-entropy; the recipe of continued pre-training after pruning (Sheared-LLaMA, Xia et al.
2023; Minitron, Muralidharan et al. 2024), in miniature.

The text is what ships offline with the task: the evidence passages and questions of the
training split, the teachers' rationales, and optionally the training split of other offline
tasks (never a test split). Bits per byte on held-out text (the validation split's evidence) are
measured before and after. Training is checkpointed, so a killed recovery resumes where it
stopped; the recovered model is written last, so its folder exists only when it is complete.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tinystudent.distill.checkpoints import LATEST, latest_checkpoint, load_checkpoint, save_best, save_checkpoint
from tinystudent.distill.config import RecoveryConfig
from tinystudent.distill.objectives import StudentBatch, StudentObjectives, teacher_states
from tinystudent.distill.terms import TermWeights
from tinystudent.distill.trainee import warmup_cosine
from tinystudent.distill.vocab import check_vocab
from tinystudent.evaluation.bits_per_byte import bits_per_byte, truncate_utf8
from tinystudent.folders import remove_made
from tinystudent.log import info
from tinystudent.models.batches import TokenBatch
from tinystudent.models.heads import causal_head, check_head
from tinystudent.models.loading import LoadedModel, load_model
from tinystudent.models.students import MANIFEST
from tinystudent.tasks.schema import Example

RESULT = "recovery.json"


@dataclass
class RecoveryResult:
    """What recovery did: the recovered model's folder and bits per byte before and after."""

    path: str
    bits_per_byte_before: float
    bits_per_byte_after: float
    steps: int
    tokens: int
    seconds: float
    corpus_tokens: int
    heldout_bytes: int
    loss_history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "loss_history"}


def recovery_texts(
    examples: Sequence[Example], rationales: dict[str, dict[str, str]] | None = None, extra: Sequence[Example] = ()
) -> list[str]:
    """Plain text to recover on: each training question with its evidence, every rationale, and
    the questions and passages of `extra` (other tasks' training splits)."""
    texts = []
    for ex in [*examples, *extra]:
        texts.append("\n".join(part for part in (ex.context, ex.question, ex.rationale) if part))
    for by_id in (rationales or {}).values():
        texts.extend(text for text in by_id.values() if text and text.strip())
    return texts


def heldout_text(examples: Sequence[Example], max_bytes: int) -> str:
    """Held-out text for bits per byte: the evidence and questions of `examples` (validation)."""
    text = "\n\n".join("\n".join(part for part in (ex.context, ex.question) if part) for ex in examples)
    return truncate_utf8(text, max_bytes)


def token_chunks(texts: Sequence[str], tokenizer, length: int) -> list[list[int]]:
    """The texts tokenized, joined by the end-of-text token and cut into `length`-token chunks."""
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [separator]
    return [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]


def _batch(chunks: list[list[int]]) -> StudentBatch:
    """Every position but the last predicts the next token of its chunk."""
    ids = torch.tensor(chunks, dtype=torch.long)
    target_mask = torch.ones_like(ids, dtype=torch.bool)
    target_mask[:, -1] = False
    next_ids = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    answer = TokenBatch(ids, torch.ones_like(ids), target_mask, next_ids)
    return StudentBatch(torch.zeros(len(chunks), dtype=torch.long), answer=answer)


def _measure(loaded: LoadedModel, text: str) -> float:
    was_training = loaded.model.training
    loaded.model.eval()
    with torch.no_grad():
        value = bits_per_byte(loaded.model, loaded.tokenizer, text, window=512)["bits_per_byte"]
    loaded.model.train(was_training)
    return value


def recover(
    student: str,
    parent: str | LoadedModel,
    texts: Sequence[str],
    heldout: str,
    config: RecoveryConfig,
    out_dir: Path,
    device: str = "auto",
    on_step: Callable[[dict], None] | None = None,
    measure: Callable[[LoadedModel, str], float] | None = None,
) -> RecoveryResult:
    """Distil `parent` into the cut `student` on `texts`; write the recovered model to
    `out_dir/model` and return bits per byte on `heldout` before and after.

    A finished recovery in `out_dir` is returned as it is; an interrupted one resumes from its
    last checkpoint (`out_dir/checkpoints`). `measure(model, text)` gives bits per byte (default:
    `evaluation.bits_per_byte` with 512-token windows; the runner passes its cached one).
    """
    measure = measure or _measure
    out_dir = Path(out_dir)
    done = out_dir / RESULT
    if done.exists():
        stored = json.loads(done.read_text())
        info(f"{out_dir} already holds this recovery; returning its result")
        return RecoveryResult(**stored)
    torch.manual_seed(config.seed)
    loaded = _load_student(student, device)
    teacher = _load_parent(parent, loaded, student)
    chunks = _recovery_chunks(texts, loaded.tokenizer, config)
    order = list(range(len(chunks)))
    random.Random(config.seed).shuffle(order)
    core = loaded.model
    core.config.use_cache = False  # type: ignore[union-attr]  # a transformers config, via Module.__getattr__
    learner = _learner(core, config, out_dir / "checkpoints")
    if learner.state["before"] is None:
        learner.state["before"] = measure(loaded, heldout)
        info(
            f"recovery of {student}: {learner.state['before']:.3f} bits per byte before, {len(chunks)} chunks of "
            f"{config.seq_len} tokens to learn from"
        )
    core.train()
    _learn(learner, teacher, chunks, order, config, student, loaded.device, on_step)
    model_dir = out_dir / "model"
    result = _result(model_dir, learner.state, config, len(chunks), heldout)
    _save_recovered(core, loaded, teacher.name, model_dir, result, config)
    del loaded
    result.bits_per_byte_after = measure(load_model(str(model_dir), device=teacher.device), heldout)
    _write_result(done, result)
    remove_made(learner.checkpoints, LATEST)
    info(
        f"recovered {student}: {result.bits_per_byte_before:.3f} -> {result.bits_per_byte_after:.3f} bits per byte in "
        f"{result.steps} steps ({result.seconds:.0f} s)"
    )
    return result


def _load_student(student: str, device: str) -> LoadedModel:
    """The cut student, in float32; it must be a causal language model."""
    loaded = load_model(student, device=device, dtype="float32")
    if not loaded.adapter.decoder_only:
        raise ValueError(
            f"recovery distils next-token distributions: {student} is a {loaded.kind} model, "
            "not a causal language model"
        )
    return loaded


def _load_parent(parent: str | LoadedModel, loaded: LoadedModel, student: str) -> LoadedModel:
    """The parent (loaded beside the student unless given loaded), frozen, its vocabulary checked
    against the student's."""
    teacher = parent if isinstance(parent, LoadedModel) else load_model(parent, device=loaded.device, dtype="float32")
    teacher.model.eval().requires_grad_(False)
    check_vocab(loaded.model, loaded.tokenizer, teacher.model, teacher.tokenizer, student, teacher.name)
    check_head(loaded.model, student)
    return teacher


def _recovery_chunks(texts: Sequence[str], tokenizer, config: RecoveryConfig) -> list[list[int]]:
    """`token_chunks` of `config.seq_len` tokens, at least one batch of them."""
    chunks = token_chunks(texts, tokenizer, config.seq_len)
    if len(chunks) < config.batch_size:
        raise ValueError(
            f"the recovery text makes {len(chunks)} chunks of {config.seq_len} tokens, fewer "
            f"than one batch of {config.batch_size}: give more text or shorter chunks"
        )
    return chunks


@dataclass
class _Learner:
    """The cut student as it learns: its model, objective, optimizer, schedule and loop state,
    checkpointed in `checkpoints`."""

    model: torch.nn.Module
    objective: StudentObjectives
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    checkpoints: Path
    state: dict[str, Any]

    def update(self, loss: torch.Tensor) -> None:
        """One optimizer step on `loss`, gradients clipped to norm 1."""
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def checkpoint(self) -> None:
        save_checkpoint(
            self.checkpoints,
            self.state["step"],
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=None,
            loop_state=self.state,
            keep=1,
        )


def _learner(core: torch.nn.Module, config: RecoveryConfig, checkpoints: Path) -> _Learner:
    """The objective (forward KL from the parent, plus cross-entropy), AdamW and a warmup-cosine
    schedule for `core`, resumed from the latest checkpoint in `checkpoints` if there is one."""
    objective = StudentObjectives(
        core,
        "causal",
        weights=TermWeights({"answer": config.ce_weight, "logit_kd": config.kd_weight}),
        temperature=config.temperature,
        divergence="forward_kl",
        chunk_tokens=config.chunk_tokens,
    )
    optimizer = torch.optim.AdamW([p for p in core.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.steps, config.warmup_ratio, 0.1))
    state: dict[str, Any] = {"step": 0, "seconds": 0.0, "history": [], "before": None}
    found = latest_checkpoint(checkpoints)
    if found:
        state = load_checkpoint(found, core, optimizer, scheduler, None)
        info(f"resuming recovery from step {state['step']} ({found})")
    return _Learner(core, objective, optimizer, scheduler, checkpoints, state)


def _learn(
    learner: _Learner,
    teacher: LoadedModel,
    chunks: list[list[int]],
    order: list[int],
    config: RecoveryConfig,
    student: str,
    device: torch.device,
    on_step: Callable[[dict], None] | None,
) -> None:
    """Train from the learner's step to `config.steps`, taking the chunks in `order`, a batch a step."""
    state = learner.state
    head = causal_head(teacher.model)
    while state["step"] < config.steps:
        started = time.perf_counter()
        first = state["step"] * config.batch_size
        picked = [chunks[order[(first + k) % len(order)]] for k in range(config.batch_size)]
        batch = _batch(picked).to(device)
        with torch.no_grad():
            states = teacher_states(teacher.model, "causal", head, batch, True, [])
        parts = learner.objective(batch, states)
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise ValueError(
                f"recovery of {student}: the loss became {float(loss)} at step {state['step'] + 1}; "
                f"lower recovery.lr (now {config.lr})"
            )
        learner.update(loss)
        state["step"] += 1
        state["seconds"] += time.perf_counter() - started
        record = {
            "step": state["step"],
            "loss": float(loss.detach()),
            "kd": float(parts.get("logit_kd", float("nan"))),
            "lr": learner.scheduler.get_last_lr()[0],
        }
        state["history"].append(record)
        if on_step:
            on_step(record)
        if state["step"] % config.checkpoint_every == 0 or state["step"] == config.steps:
            learner.checkpoint()


def _result(
    model_dir: Path, state: dict[str, Any], config: RecoveryConfig, n_chunks: int, heldout: str
) -> RecoveryResult:
    """The result so far: bits per byte after recovery are measured once the model is saved."""
    return RecoveryResult(
        str(model_dir),
        state["before"],
        float("nan"),
        state["step"],
        state["step"] * config.batch_size * config.seq_len,
        round(state["seconds"], 1),
        n_chunks * config.seq_len,
        len(heldout.encode("utf-8")),
        state["history"],
    )


def _save_recovered(
    core: torch.nn.Module,
    loaded: LoadedModel,
    parent_name: str,
    model_dir: Path,
    result: RecoveryResult,
    config: RecoveryConfig,
) -> None:
    """Write the recovered model to `model_dir`, with the cut student's manifest, if it has one."""
    save_best(core, loaded.tokenizer, model_dir, False, {"recovery": result.summary(), "config": config.model_dump()})
    manifest = Path(loaded.resolved.path) / MANIFEST
    if manifest.exists():  # the kept layers stay known (patient KD pairs layers by them)
        described = json.loads(manifest.read_text())
        described["recovered"] = {"from": parent_name, "steps": result.steps, "tokens": result.tokens}
        (model_dir / MANIFEST).write_text(json.dumps(described, indent=2))


def _write_result(done: Path, result: RecoveryResult) -> None:
    """Write `result` to `done` whole or not at all (through a temporary file)."""
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), default=str))
    tmp.replace(done)


__all__ = ["RecoveryResult", "heldout_text", "recover", "recovery_texts", "token_chunks"]
