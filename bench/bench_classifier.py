"""A yes/no student as a classifier (one pass per question) vs a cross-encoder (one pass per choice),
and training batches grouped by length vs in plain random order.

The same MiniLM cut, the same BioASQ questions fitted the same way (`--budget` tokens, evidence
selected), one after another in one process. Prints the time of each and the ratios:

- scoring the test split: cross-encoder (baseline) vs classifier;
- training steps: cross-encoder in random order (baseline) vs classifier, random and grouped by
  length.

    .venv/bin/python bench/bench_classifier.py --budget 256 --steps 12
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tinystudent.distill.config import TrainConfig
from tinystudent.distill.loop import TrainingRun
from tinystudent.distill.train import _accelerator
from tinystudent.distill.trainee import setup_trainee
from tinystudent.evaluation import evaluate_model
from tinystudent.log import quiet_libraries
from tinystudent.models import load_model
from tinystudent.models.students import scale_down
from tinystudent.tasks import load_task
from tinystudent.tasks.schema import shared_choices

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def students(folder: Path, keep: str, labels: list[str]) -> dict[str, str]:
    return {
        "cross-encoder": str(scale_down(MINILM, keep, folder / "encoder")),
        "classifier": str(scale_down(MINILM, keep, folder / "classifier", kind="classifier", labels=labels)),
    }


def time_scoring(path: str, test, budget: int) -> float:
    loaded = load_model(path, device="cpu")
    evaluate_model(loaded, test[:4], "bioasq", "test", max_input_tokens=budget, evidence="select")  # warm-up
    started = time.perf_counter()
    evaluate_model(loaded, test, "bioasq", "test", max_input_tokens=budget, evidence="select")
    return time.perf_counter() - started


def time_training(path: str, train, budget: int, steps: int, grouped: bool, out: Path) -> float:
    config = TrainConfig(
        steps=steps,
        batch_size=16,
        max_input_tokens=budget,
        evidence="select",
        group_by_length=grouped,
        attention_dropout=0.0,
        device="cpu",
        eval_before=False,
    )
    accelerator, device = _accelerator("cpu")
    weights = config.weights.resolve({})
    trainee = setup_trainee(
        name=path,
        out_dir=out,
        config=config,
        train=train,
        style="context",
        rationales={},
        choice_logprobs={},
        teacher=None,
        device=device,
        total_steps=steps,
        weights=weights,
    )
    run = TrainingRun(
        trainees=[trainee],
        train=train,
        valid=[],
        config=config,
        task="bioasq",
        accelerator=accelerator,
        device=device,
        total_steps=steps,
        weights=weights,
        mutual=False,
        on_step=None,
    )
    run.step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        run.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-layers", default="spread:4")
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    quiet_libraries()
    data = load_task("bioasq")
    train, test = data.split("train"), data.split("test")
    with tempfile.TemporaryDirectory() as tmp:
        paths = students(Path(tmp), args.keep_layers, shared_choices(train))
        scoring = {name: time_scoring(path, test, args.budget) for name, path in paths.items()}
        training = {
            "cross-encoder, random order": time_training(
                paths["cross-encoder"], train, args.budget, args.steps, False, Path(tmp) / "t1"
            ),
            "classifier, random order": time_training(
                paths["classifier"], train, args.budget, args.steps, False, Path(tmp) / "t2"
            ),
            "classifier, grouped by length": time_training(
                paths["classifier"], train, args.budget, args.steps, True, Path(tmp) / "t3"
            ),
        }
    print(f"MiniLM {args.keep_layers}, BioASQ, {args.budget} tokens of selected evidence")
    base = scoring["cross-encoder"]
    for name, seconds in scoring.items():
        print(f"scoring {len(test)} test questions, {name}: {seconds:.1f} s ({base / seconds:.2f}x the cross-encoder)")
    base = training["cross-encoder, random order"]
    for name, seconds in training.items():
        print(f"{args.steps} training steps of 16 questions, {name}: {seconds:.1f} s ({base / seconds:.2f}x)")


if __name__ == "__main__":
    main()
