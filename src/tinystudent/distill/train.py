"""`train_student` and `train_mutual`: the public entry points of training."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import torch

from tinystudent.distill.checkpoints import load_best
from tinystudent.distill.config import TrainConfig
from tinystudent.distill.data import check_choice_logprobs, check_free_form_objectives, check_rationales
from tinystudent.distill.loop import TrainingDiverged, TrainingRun, check_objectives, check_splits, claim_run_folder
from tinystudent.distill.lora import save_merged
from tinystudent.distill.result import TrainResult
from tinystudent.distill.terms import CHOICE_LOGPROBS, RATIONALES, TEACHER_MODELS, TermWeights
from tinystudent.distill.trainee import Trainee, named_teachers, setup_trainee
from tinystudent.evaluation.cost import MemoryMeter
from tinystudent.evaluation.prompts import prompt_style
from tinystudent.hashing import stable_hash
from tinystudent.log import info
from tinystudent.models.loading import LoadedModel, resolve_model
from tinystudent.tasks.schema import Example, data_hash, is_free_form

__all__ = ["TrainingDiverged", "main_process_first", "train_mutual", "train_student"]


def _teacher_identity(teacher) -> str | dict | None:
    if teacher is None:
        return None
    if isinstance(teacher, dict):  # named teacher models: each one's identity by its name
        return {name: _teacher_identity(model) for name, model in teacher.items()}
    if isinstance(teacher, LoadedModel):
        return teacher.resolved.identity
    return resolve_model(teacher).identity


def _cpu_run(device: str) -> bool:
    # On a machine without a GPU the processes of `accelerate launch`/`torchrun` talk over gloo,
    # which accelerate only sets up when told the run is a CPU run.
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def main_process_first(device: str = "auto"):
    """A context in which the main process goes first and the others wait for it (a no-op in a
    single process): for work on shared files, such as building a scaled-down student once."""
    from accelerate import PartialState

    return PartialState(cpu=_cpu_run(device)).main_process_first()


def _accelerator(device: str):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=_cpu_run(device), device_placement=False)
    if device in ("auto", "cpu") or accelerator.num_processes > 1:
        return accelerator, accelerator.device
    return accelerator, torch.device(device)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(name).name or name).strip("-")[:60]


def _train(
    students: list[str],
    train: list[Example],
    valid: list[Example],
    config: TrainConfig,
    out_dir: Path,
    *,
    rationales,
    choice_logprobs,
    teacher,
    task: str,
    test: list[Example] | None,
    mutual: bool,
    resume: bool,
    on_step: Callable[[dict], None] | None,
    teacher_logits_db: Path | None = None,
) -> list[TrainResult]:
    from accelerate.utils import set_seed

    out_dir = Path(out_dir)
    contamination = check_splits(train, valid, test)
    rationales, choice_logprobs, weights = _checked_inputs(train, rationales, choice_logprobs, config, teacher, mutual)
    valid = valid[: config.valid_limit] if config.valid_limit else list(valid)
    accelerator, device = _accelerator(config.device)
    per_step = config.batch_size * config.grad_accum * accelerator.num_processes
    total_steps = config.steps or max(1, math.ceil(config.epochs * len(train) / per_step))
    description = _describe_run(
        students,
        config,
        task=task,
        mutual=mutual,
        train=train,
        valid=valid,
        test=test,
        rationales=rationales,
        choice_logprobs=choice_logprobs,
        teacher=teacher,
        accelerator=accelerator,
    )
    run_key = stable_hash(description)
    if accelerator.is_main_process:
        claim_run_folder(out_dir, run_key, resume, description)
    accelerator.wait_for_everyone()
    done = out_dir / "result.json"
    if done.exists() and resume:
        stored = json.loads(done.read_text())
        info(f"{out_dir} already holds this finished run ({run_key}); returning its result")
        return [TrainResult.from_dict(row) for row in stored["results"]]

    set_seed(config.seed)
    style = prompt_style(task, train)
    trainees = []
    for index, name in enumerate(students):
        folder = out_dir / f"peer{index}-{_slug(name)}" if mutual else out_dir
        trainee = setup_trainee(
            name=name,
            out_dir=folder,
            config=config,
            train=train,
            style=style,
            rationales=rationales,
            choice_logprobs=choice_logprobs,
            teacher=teacher,
            device=device,
            total_steps=total_steps,
            weights=weights,
        )
        trainee.objective = accelerator.prepare(trainee.objective)
        trainees.append(trainee)
    run = TrainingRun(
        trainees=trainees,
        train=train,
        valid=valid,
        config=config,
        task=task,
        accelerator=accelerator,
        device=device,
        total_steps=total_steps,
        weights=weights,
        mutual=mutual,
        on_step=on_step,
    )
    if config.teacher_logits_top_k is not None:  # computed once, before training (distill.stored_logits)
        from tinystudent.distill.stored_logits import prepare_stored_logits, stored_identity

        with accelerator.main_process_first():  # the others find every row stored
            for trainee in trainees:
                prepare_stored_logits(
                    trainee,
                    train,
                    config,
                    weights,
                    teacher_identity=stored_identity(description["teacher"]),
                    db=teacher_logits_db,
                    autocast_dtype=run.autocast_dtype,
                )
    if resume:
        run.resume()
    memory = MemoryMeter(device)
    with memory.measure():
        run.run()
    results = [_finish(run, tr, test, memory, run_key) for tr in trainees]
    for result in results:
        result.contamination = contamination
    if accelerator.is_main_process:
        _write_results(done, run_key, results)
    accelerator.wait_for_everyone()
    return results


def _checked_inputs(
    train: list[Example],
    rationales,
    choice_logprobs,
    config: TrainConfig,
    teacher,
    mutual: bool,
) -> tuple[dict, dict, TermWeights]:
    """Fail early on data and objectives that do not fit together; returns the checked rationales
    and choice log-probabilities and the run's resolved weights (each teacher's, for the terms
    learnt per teacher)."""
    if not train:
        raise ValueError("no training examples")
    if is_free_form(train):
        check_free_form_objectives(config, choice_logprobs, mutual)
    rationales = check_rationales(rationales, train)
    choice_logprobs = check_choice_logprobs(choice_logprobs, train)
    with_data = {
        RATIONALES: list(rationales),
        CHOICE_LOGPROBS: list(choice_logprobs),
        TEACHER_MODELS: list(named_teachers(teacher)),
    }
    weights = config.weights.resolve(with_data, mutual)
    check_objectives(config, weights, teacher, mutual)
    if config.teacher_logits_top_k is not None:  # one teacher, logit_kd (distill.stored_logits)
        from tinystudent.distill.stored_logits import check_stored_logits

        check_stored_logits(weights, named_teachers(teacher))
    return rationales, choice_logprobs, weights


def _describe_run(
    students: list[str],
    config: TrainConfig,
    *,
    task: str,
    mutual: bool,
    train: list[Example],
    valid: list[Example],
    test: list[Example] | None,
    rationales: dict,
    choice_logprobs: dict,
    teacher,
    accelerator,
) -> dict:
    """Everything a run's result depends on (its hash is the run's key), the weights identified
    by their hashes."""
    with accelerator.main_process_first():  # the others then find the weights' hashes cached
        identities = [resolve_model(s).identity for s in students]
        teacher_identity = _teacher_identity(teacher)
    return {
        "students": students,
        "student_identities": identities,
        "config": config.keyed(),
        "task": task,
        "mutual": mutual,
        "data": {"train": data_hash(train), "valid": data_hash(valid), "test": data_hash(test or [])},
        "rationales": stable_hash(rationales),
        "choice_logprobs": stable_hash(choice_logprobs),
        "teacher": teacher_identity,
        "processes": accelerator.num_processes,
    }


def _write_results(done: Path, run_key: str, results: list[TrainResult]) -> None:
    """Write the run's results to `done` whole or not at all (through a temporary file)."""
    payload = {"run_key": run_key, "results": [r.to_dict() for r in results]}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(done)


def _finish(
    run: TrainingRun, tr: Trainee, test: list[Example] | None, memory: MemoryMeter, run_key: str
) -> TrainResult:
    """Put the kept checkpoint back, measure it on the test examples, export, report."""
    state, shared, config = tr.state, run.shared, run.config
    best_dir = tr.out_dir / "best"
    if state["best_step"] is None:  # no validation examples: keep the final model
        state["best_step"] = shared["step"]
        run.save_best(tr, {"step": shared["step"], "valid_acc": None})
    elif state["best_step"] != shared["step"]:
        load_best(tr.model, best_dir, tr.is_lora)
        info(
            f"{tr.name}: kept the checkpoint of step {state['best_step']} (validation accuracy {state['best_acc']:.4f})"
        )
    checkpoint = best_dir
    if tr.is_lora and config.lora.merge and run.accelerator.is_main_process:
        checkpoint = tr.out_dir / "merged"
        save_merged(tr.model, tr.loaded.tokenizer, checkpoint)
    test_eval = run.evaluate(tr, test, "test") if test else None
    history = state["loss_history"]
    window = history[-config.log_every :]
    train_loss = sum(h["loss"] for h in window) / len(window) if window else None
    seconds = shared["train_seconds"]
    return TrainResult(
        student=tr.name,
        method=config.method,
        task=run.task,
        params=tr.counts["total"],
        trainable_params=tr.trainable,
        non_embedding_params=tr.counts["non_embedding"],
        embedding_params=tr.counts["embedding"],
        steps=shared["step"],
        total_steps=run.total_steps,
        epochs=round(shared["consumed"] / len(run.train), 3),
        train_loss=train_loss,
        valid_acc=state["best_acc"],
        valid_acc_before=state["valid_acc_before"],
        test_acc=test_eval.acc if test_eval else None,
        best_step=state["best_step"],
        stopped_early=shared["stopped_early"],
        tokens_per_s=round(shared["tokens"] / seconds, 1) if seconds else 0.0,
        train_seconds=round(seconds, 2),
        peak_memory_mb=memory.peak_mb,
        peak_memory_scope=memory.scope,
        checkpoint=str(checkpoint),
        device=str(run.device),
        run_key=run_key,
        config=config.model_dump(mode="json"),
        loss_history=history,
        valid_history=state["valid_history"],
        test_eval=test_eval.summary() if test_eval else None,
        inputs_fit=tr.fit,
    )


def train_student(
    student: str,
    train_examples: list[Example],
    valid_examples: list[Example],
    config: TrainConfig,
    out_dir: Path,
    *,
    rationales: dict[str, dict[str, str]] | None = None,
    choice_logprobs: dict[str, dict[str, list[float]]] | None = None,
    teacher: LoadedModel | str | dict[str, LoadedModel | str] | None = None,
    task: str = "",
    test_examples: list[Example] | None = None,
    resume: bool = True,
    on_step: Callable[[dict], None] | None = None,
    teacher_logits_db: Path | None = None,
) -> TrainResult:
    """Train one student on a task, from any mix of answers, teachers' rationales, teachers'
    choice distributions and a teacher model's logits.

    Args:
        student: Hub id, local folder or GGUF file (a scaled-down or fresh student is a folder).
        train_examples, valid_examples: questions to train on and to select the checkpoint by.
        config: the run's settings (`TrainConfig`).
        out_dir: the run's folder: `best/` (the kept model), `checkpoints/`, `result.json`.
        rationales: teacher name -> example id -> rationale text.
        choice_logprobs: teacher name -> example id -> log-probability of each choice.
        teacher: a teacher model (LoadedModel or name) for token-level KD (logit_kd, uld_kd,
            hidden), or several by name (name -> model): `weights.logit_kd` / `weights.uld_kd` take
            one weight or name -> weight, their distributions averaged; a model alone is named by
            itself (its `LoadedModel.name`).
        task: the task's name; it picks the prompt style, as in evaluation.
        test_examples: measured once, with the kept checkpoint, at the end.
        resume: continue from the last checkpoint in out_dir, or return the stored result of a
            finished identical run (True); False starts over, deleting out_dir's content.
        on_step: called after every optimizer step with a progress dict (step, total_steps,
            loss, lr, tokens_per_s, valid_acc).
        teacher_logits_db: the results database that keeps the teacher's logits with
            `config.teacher_logits_top_k` (`distill.stored_logits`); None: the default one.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (the last good checkpoint is kept).
        ValueError: inconsistent objectives and data, overlapping splits, incompatible teacher.
    """
    return _train(
        [student],
        train_examples,
        valid_examples,
        config,
        out_dir,
        rationales=rationales,
        choice_logprobs=choice_logprobs,
        teacher=teacher,
        task=task,
        test=test_examples,
        mutual=False,
        resume=resume,
        on_step=on_step,
        teacher_logits_db=teacher_logits_db,
    )[0]


def train_mutual(
    students: list[str],
    train_examples: list[Example],
    valid_examples: list[Example],
    config: TrainConfig,
    out_dir: Path,
    task: str = "",
    test_examples: list[Example] | None = None,
    rationales: dict[str, dict[str, str]] | None = None,
    choice_logprobs: dict[str, dict[str, list[float]]] | None = None,
    *,
    resume: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> list[TrainResult]:
    """Deep mutual learning (Zhang et al. 2018): two or more students trained together.

    Every step each student minimises its own objectives (`config.weights`, the answer by
    default) plus `weights.mutual` times the mean KL divergence from each peer's current,
    detached distribution over the choices to its own, at `config.temperature`. All peers see the
    same questions in the same order and step simultaneously. No large teacher is involved.
    Each peer's files go to `out_dir/peer<i>-<name>/`.
    """
    if len(students) < 2:
        raise ValueError(f"mutual learning needs at least two students, got {len(students)}")
    return _train(
        list(students),
        train_examples,
        valid_examples,
        config,
        out_dir,
        rationales=rationales,
        choice_logprobs=choice_logprobs,
        teacher=None,
        task=task,
        test=test_examples,
        mutual=True,
        resume=resume,
        on_step=on_step,
    )
