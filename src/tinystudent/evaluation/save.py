"""One evaluation, from loading the model to the stored result: what `tinystudent eval` does, and
what an experiment's evaluation child process does."""

from __future__ import annotations

from pathlib import Path

from tinystudent.evaluation.evaluate import evaluate_model
from tinystudent.log import progress, stderr
from tinystudent.models import load_model
from tinystudent.store import Store
from tinystudent.tasks import normalize_split
from tinystudent.tasks.schema import TaskData


def evaluate_and_save(
    data: TaskData,
    model: str,
    task: str,
    split: str,
    db: Path | None,
    *,
    limit: int | None,
    seed: int,
    mode: str,
    batch_size: int,
    max_input_tokens: int | None,
    num_fewshot: int,
    evidence: str = "cut",
    sampling=None,
    run_key: str | None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> dict:
    """Evaluate `model` on the first `limit` questions of `data`'s `split` and save the result in
    the results database `db`, replacing the evaluation stored under `run_key`, if any.

    `task` names the task as given (it picks the prompt style); in-context examples come from the
    train split when `num_fewshot` is set. Returns the summary `tinystudent eval --json` prints.
    """

    examples = data.split(split)
    examples = examples[:limit] if limit else examples
    pool = data.split("train") if num_fewshot else None
    with Store(db) as store:  # opened first: a bad database fails before any model work
        loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        stderr.print(
            f"evaluating {model} on {task}/{normalize_split(split)}: {len(examples)} questions, "
            f"{loaded.kind} model on {loaded.device}"
        )
        with progress() as bar:
            row = bar.add_task("questions", total=len(examples), status="")
            result = evaluate_model(
                loaded,
                examples,
                task,
                normalize_split(split),
                mode=mode,
                batch_size=batch_size,
                max_input_tokens=max_input_tokens,
                num_fewshot=num_fewshot,
                shots_pool=pool,
                seed=seed,
                on_progress=lambda n: bar.update(row, advance=n),
                evidence=evidence,
                sampling=sampling,
            )
        result.settings.update({"task_origin": data.origin, "limit": limit, "seed": seed})
        evaluation_id = store.save_evaluation(result, run_key)
    return {**result.summary(), "evaluation_id": evaluation_id, "db": str(store.path)}
