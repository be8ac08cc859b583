"""The training loop: short and explicit, no Trainer subclass.

One loop trains one student (`train_student`) or several peers together (`train_mutual`, deep
mutual learning). Each optimizer step: micro-batches (gradient accumulation) -> loss terms ->
weighted sum -> backward -> clip -> AdamW -> warm-up/cosine schedule; then evaluation,
best-checkpoint, early stopping and resumable checkpoints when due. Accelerate's `Accelerator`
wraps the student for DDP under `accelerate launch` and is a no-op on one device.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from tinystudent.distill.checkpoints import latest_checkpoint, load_checkpoint, save_best, save_checkpoint
from tinystudent.distill.config import TrainConfig
from tinystudent.distill.data import SampleStream
from tinystudent.distill.losses import mutual_kl
from tinystudent.distill.teacher_models import teacher_passes
from tinystudent.distill.terms import TermWeights, terms
from tinystudent.distill.trainee import Trainee, make_batch, resolve_precision, token_pairs
from tinystudent.evaluation.evaluate import EvalResult, evaluate_model
from tinystudent.log import info, warn
from tinystudent.tasks.contamination import check_contamination
from tinystudent.tasks.schema import Example, is_free_form
from tinystudent.threads import keep_share


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


def check_splits(train: list[Example], valid: list[Example], test: list[Example] | None) -> dict | None:
    """Refuse training questions that are also validation or test questions (by id), and
    training or validation questions whose text is a test question's (`tasks.contamination`).
    Returns what the text check compared (None without test questions).

    Raises:
        ValueError: the splits overlap; the message names a few shared ids.
        Contamination: a test question's text is in the training or validation questions.
    """
    train_ids = {ex.id for ex in train}
    for name, other in (("validation", valid), ("test", test or [])):
        shared = train_ids & {ex.id for ex in other}
        if shared:
            raise ValueError(
                f"{len(shared)} training question(s) are also in the {name} examples "
                f"(ids like {sorted(shared)[:3]}); the splits must not overlap"
            )
    return check_contamination(test, {"train": train, "validation": valid}) if test else None


def check_objectives(config: TrainConfig, weights: TermWeights, teacher, mutual: bool) -> None:
    """Check that every weighted objective has its data before any work (each term's `check`).

    Args:
        config: the run's config; its `weights` say which objectives are on.
        weights: the run's resolved weights (`ObjectiveWeights.resolve`: per-teacher terms only
            over the teachers with data).
        teacher: the teacher model of token-level terms (logit_kd, hidden, onpolicy_kd), or None.
        mutual: deep mutual learning, where the peers' terms are objectives too.

    Raises:
        ValueError: an objective with weight above 0 has no data or teacher, or every weight is 0.
    """
    active = [t for t in terms() if weights.active(t.name)]
    for found in terms():
        if config.weights.configured(found.name) and not (found.with_peers and not mutual):
            found.check(weights.values.get(found.name, 0.0), teacher is not None)
    if teacher is not None and not any(t.teacher_model for t in active):
        names = ", ".join(f"weights.{t.name}" for t in terms() if t.teacher_model)
        warn(f"a teacher model was given but {names} are 0: it is not used")
    if not active:
        raise ValueError("every objective has weight 0: nothing to train")


def validation_loss(result: EvalResult) -> float | None:
    """Mean negative log-probability of the gold choice under the student's distribution over the
    choices (a softmax of its choice scores); None when the scores were not kept."""
    rows = [p for p in result.predictions if p.choice_logprobs]
    if not rows:
        return None
    losses = [
        -float(torch.log_softmax(torch.tensor(p.choice_logprobs, dtype=torch.float64), -1)[int(p.gold)]) for p in rows
    ]
    return sum(losses) / len(losses)


def claim_run_folder(out_dir: Path, run_key: str, resume: bool, description: dict) -> None:
    """Make out_dir this run's folder, writing `run.json` (run_key and description); refuse to mix
    two different runs in one folder. With resume False, a run already there is deleted first.

    Raises:
        ValueError: out_dir holds another run (another run key) and resume is True.
    """
    marker = out_dir / "run.json"
    if marker.exists():
        found = json.loads(marker.read_text())
        if found.get("run_key") != run_key:
            if resume:
                raise ValueError(
                    f"{out_dir} holds another run (run key {found.get('run_key')}, "
                    f"this one {run_key}: student, config or data differ); use another "
                    "folder, or resume=False to start over there"
                )
            for child in out_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif not resume:
            for child in out_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_key": run_key, **description}, indent=1, default=str))


class TrainingRun:
    """The state of one run over its trainees (one student, or peers in mutual learning).

    `train.py` makes one per run: `resume()` loads the last checkpoint, `run()` trains to the end,
    `evaluate` and `save_best` serve the final measurement.
    """

    def __init__(
        self,
        *,
        trainees: list[Trainee],
        train: list[Example],
        valid: list[Example],
        config: TrainConfig,
        task: str,
        accelerator,
        device,
        total_steps: int,
        weights: TermWeights,
        mutual: bool,
        on_step,
    ):
        self.trainees, self.train, self.valid, self.config, self.task = trainees, train, valid, config, task
        self.accelerator, self.device, self.total_steps = accelerator, device, total_steps
        self.weights, self.mutual = weights, mutual
        self.on_step = on_step
        lengths = [trainees[0].features[ex.id].length for ex in train] if config.group_by_length else None
        self.stream = SampleStream(len(train), config.seed, lengths, config.batch_size)
        self.autocast_dtype = resolve_precision(config.precision, device)
        self.shared: dict[str, Any] = {
            "step": 0,
            "consumed": 0,
            "tokens": 0,
            "train_seconds": 0.0,
            "stopped_early": False,
        }
        for tr in trainees:
            tr.state = {
                "loss_history": [],
                "valid_history": [],
                "best_acc": None,
                "best_step": None,
                "bad_evals": 0,
                "valid_acc_before": None,
            }

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # --- resuming -------------------------------------------------------------------------

    def resume(self) -> bool:
        found = [latest_checkpoint(tr.out_dir / "checkpoints") for tr in self.trainees]
        paths = [path for path in found if path is not None]
        if len(paths) < len(found):
            return False
        rank = self.accelerator.process_index
        for tr, path in zip(self.trainees, paths):
            state = load_checkpoint(path, tr.model, tr.optimizer, tr.scheduler, tr.scaler, rank)
            self.shared, tr.state = state["shared"], state["trainee"]
        info(f"resuming from step {self.shared['step']} ({paths[0]})")
        return True

    def checkpoint(self) -> None:
        for tr in self.trainees:
            save_checkpoint(
                tr.out_dir / "checkpoints",
                self.shared["step"],
                model=tr.model,
                optimizer=tr.optimizer,
                scheduler=tr.scheduler,
                scaler=tr.scaler,
                loop_state={"shared": self.shared, "trainee": tr.state},
                keep=self.config.keep_checkpoints,
                rank=self.accelerator.process_index,
                is_main=self.accelerator.is_main_process,
            )

    # --- evaluation -----------------------------------------------------------------------

    def eval_mode(self, examples: list[Example]) -> str:
        """How a student is judged: by its choices' scores, or, on a free-form task, by what it
        writes: a chain of thought when it learns from rationales, else the answer at once."""
        if not is_free_form(examples):
            return "loglikelihood"
        return "generate_cot" if self.weights.active("rationale") else "generate"

    def evaluate(self, tr: Trainee, examples: list[Example], split: str):
        """Accuracy of the student as it stands, scored by the evaluation module (main process)."""
        from accelerate.utils import broadcast_object_list

        payload: list[EvalResult | None] = [None]
        if self.accelerator.is_main_process:
            tr.loaded.model.eval()
            with torch.no_grad(), self.autocast():
                result = evaluate_model(
                    tr.loaded,
                    examples,
                    self.task or "task",
                    split,
                    mode=self.eval_mode(examples),
                    batch_size=self.config.eval_batch_size,
                    max_input_tokens=self.config.max_input_tokens,
                    evidence=self.config.evidence,
                )
            tr.loaded.model.train()
            payload = [result]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(payload)
        return payload[0]

    def validate(self) -> None:
        """Evaluate every trainee on the validation examples; keep the best (by accuracy, ties
        broken by the lower validation loss); count patience.

        The tie-break matters on small, one-sided splits: a student that has learnt only to say
        "yes" scores the majority rate, and a later checkpoint that has learnt more often scores
        the same; accuracy alone would keep the first."""
        step = self.shared["step"]
        for tr in self.trainees:
            result = self.evaluate(tr, self.valid, "validation")
            acc, loss = result.acc, validation_loss(result)
            tr.state["valid_history"].append({"step": step, "acc": acc, "loss": loss})
            if step == 0:
                tr.state["valid_acc_before"] = acc
            best, best_loss = tr.state["best_acc"], tr.state.get("best_loss")
            if (
                best is None
                or acc > best
                or (acc == best and loss is not None and (best_loss is None or loss < best_loss))
            ):
                tr.state.update(best_acc=acc, best_loss=loss, best_step=step, bad_evals=0)
                self.save_best(tr, {"step": step, "valid_acc": acc, "valid_loss": loss})
            elif step > 0:
                tr.state["bad_evals"] += 1
        patience = self.config.early_stopping_patience
        if patience and all(tr.state["bad_evals"] >= patience for tr in self.trainees):
            self.shared["stopped_early"] = True

    def save_best(self, tr: Trainee, details: dict) -> None:
        if self.accelerator.is_main_process:
            save_best(
                tr.model,
                tr.loaded.tokenizer,
                tr.out_dir / "best",
                tr.is_lora,
                {**details, "student": tr.name, "config": self.config.model_dump(mode="json")},
            )
        self.accelerator.wait_for_everyone()

    # --- one optimizer step ----------------------------------------------------------------

    def _micro_batch(self, last: bool) -> tuple[list[dict], int]:
        config, world, rank = self.config, self.accelerator.num_processes, self.accelerator.process_index
        start = self.shared["consumed"] + rank * config.batch_size
        examples = [self.train[i] for i in self.stream.take(start, config.batch_size)]
        self.shared["consumed"] += config.batch_size * world
        outputs, tokens = [], 0
        for tr in self.trainees:
            with self.autocast():  # under it too: on-policy KD has the student write some answers
                batch = make_batch(tr, examples, config, self.weights, position=start).to(self.device)
                tokens += batch.tokens
                teacher, own, want_hidden = teacher_passes(
                    tr.teachers, tr.kd_vocab, batch, self.weights, config.temperature
                )
                if tr.stored_logits is not None:  # the teacher's stored top-k logits (distill.stored_logits)
                    pairs = token_pairs(tr, examples, config, self.weights, position=start)
                    teacher = tr.stored_logits.states(pairs, teacher, self.device)
                outputs.append(tr.objective(batch, teacher, want_hidden=want_hidden, own_tokens=own))
        return outputs, tokens

    def _losses(self, outputs: list[dict]) -> list[torch.Tensor]:
        """Each student's objective, plus in mutual learning `w_mutual` times the mean KL from
        each peer's detached choice distribution to its own (Zhang et al. 2018)."""
        losses = []
        for k, parts in enumerate(outputs):
            loss = parts["loss"]
            if self.mutual:
                peers = [o["choice_scores"] for j, o in enumerate(outputs) if j != k]
                mutual = mutual_kl(parts["choice_scores"], peers, self.config.temperature).mean()
                parts["mutual"] = mutual.detach()
                loss = loss + self.weights.scalar("mutual") * mutual
            losses.append(loss)
        return losses

    def _diverged(self, tr: Trainee, loss: torch.Tensor, parts: dict) -> TrainingDiverged:
        terms = {k: round(float(v), 4) for k, v in parts.items() if k not in ("choice_scores", "loss")}
        last = latest_checkpoint(tr.out_dir / "checkpoints")
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        return TrainingDiverged(
            f"the loss of {tr.name} became {float(loss.detach())} at step {self.shared['step'] + 1} "
            f"(terms: {terms}); training stopped and {kept}. Lower the learning rate "
            f"(now {self.config.learning_rate}), use precision fp32, or check the data"
        )

    def step(self) -> None:
        config = self.config
        started = time.perf_counter()
        sums: list[dict[str, float]] = [{} for _ in self.trainees]
        tokens = 0
        for micro in range(config.grad_accum):
            last = micro == config.grad_accum - 1
            outputs, micro_tokens = self._micro_batch(last)
            tokens += micro_tokens
            losses = self._losses(outputs)
            for tr, loss, parts in zip(self.trainees, losses, outputs):
                if not torch.isfinite(loss):
                    raise self._diverged(tr, loss, parts)
            for k, (tr, loss, parts) in enumerate(zip(self.trainees, losses, outputs)):
                sync = contextlib.nullcontext() if last else self.accelerator.no_sync(tr.objective)
                scaled = loss / config.grad_accum
                with sync:
                    (tr.scaler.scale(scaled) if tr.scaler else scaled).backward()
                record = {"loss": float(loss.detach())}
                record.update({n: float(v) for n, v in parts.items() if n not in ("choice_scores", "loss")})
                for n, v in record.items():
                    sums[k][n] = sums[k].get(n, 0.0) + v / config.grad_accum
        for tr, record in zip(self.trainees, sums):
            if self.accelerator.num_processes > 1:  # the logged loss is the mean over processes
                total = torch.tensor(record["loss"], device=self.device)
                record["loss"] = float(self.accelerator.reduce(total, "mean"))
            self._apply(tr, record)
        self.shared["step"] += 1
        self.shared["tokens"] += tokens * self.accelerator.num_processes
        self.shared["train_seconds"] += time.perf_counter() - started
        for tr, record in zip(self.trainees, sums):
            lr = tr.scheduler.get_last_lr()[0]
            tr.state["loss_history"].append({"step": self.shared["step"], **record, "lr": lr})

    def _apply(self, tr: Trainee, record: dict) -> None:
        config = self.config
        params = [p for p in tr.objective.parameters() if p.requires_grad]
        if tr.scaler:
            tr.scaler.unscale_(tr.optimizer)
        if config.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(params, config.max_grad_norm)
            record["grad_norm"] = float(norm)
            if not math.isfinite(float(norm)) and tr.scaler is None:
                raise self._diverged(tr, torch.tensor(float(norm)), {"grad_norm": norm})
        if tr.scaler:
            tr.scaler.step(tr.optimizer)
            tr.scaler.update()
        else:
            tr.optimizer.step()
        tr.scheduler.step()
        tr.optimizer.zero_grad(set_to_none=True)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        config = self.config
        if (
            self.valid
            and config.eval_before
            and self.shared["step"] == 0
            and self.trainees[0].state["valid_acc_before"] is None
        ):
            self.validate()
        while self.shared["step"] < self.total_steps and not self.shared["stopped_early"]:
            keep_share()  # a unit running beside others gets their threads when they end
            self.step()
            step = self.shared["step"]
            due_eval = self.valid and (
                (config.eval_every and step % config.eval_every == 0) or step == self.total_steps
            )
            if due_eval:
                self.validate()
            finished = step == self.total_steps or self.shared["stopped_early"]
            if config.checkpoint_every and (step % config.checkpoint_every == 0 or finished):
                self.checkpoint()  # the last one too: a run killed while finishing trains no step again
            if self.on_step:
                self.on_step(self.progress())

    def progress(self) -> dict:
        shared = self.shared
        return {
            "step": shared["step"],
            "total_steps": self.total_steps,
            "loss": [tr.state["loss_history"][-1]["loss"] for tr in self.trainees],
            "lr": self.trainees[0].state["loss_history"][-1]["lr"],
            "tokens_per_s": shared["tokens"] / shared["train_seconds"] if shared["train_seconds"] else 0.0,
            "valid_acc": [
                tr.state["valid_history"][-1]["acc"] if tr.state["valid_history"] else None for tr in self.trainees
            ],
        }
