"""How much of a model survives when layers are dropped: one line per layer selection.

For each selection, scale the model down (`models.students.scale_down`), then measure
- its language-modelling loss in nats per token on the first 512 tokens of
  "Question: ... Answer: <gold choice>." for the first 60 training questions of the task, and
- its accuracy on the first 200 validation questions (log-likelihood scoring, as `eval`).

    .venv/bin/python scripts/layer_survey.py first:8 every:3 0,1,2,4,6,8,10,12,14,16,18,20,22,24,26,28,29
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keep", nargs="+", help="layer selections (first:N, every:K, spread:N, 0,1,29 ...)")
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--task", default="arc_easy")
    args = parser.parse_args()

    from tinystudent.evaluation.evaluate import evaluate_model
    from tinystudent.log import quiet_libraries
    from tinystudent.models.loading import load_model
    from tinystudent.models.students import scale_down
    from tinystudent.tasks import load_task

    quiet_libraries()
    task = load_task(args.task)
    valid = task.split("validation")[:200]
    text = " ".join(f"Question: {e.question} Answer: {e.choices[e.answer]}." for e in task.split("train")[:60])
    with tempfile.TemporaryDirectory() as root:
        for keep in args.keep:
            path = scale_down(args.model, keep, Path(root) / f"s{args.keep.index(keep)}")
            student = load_model(str(path), device="cpu", dtype="float32")
            ids = student.tokenizer(text, return_tensors="pt").input_ids[:, :512]
            with torch.no_grad():
                nll = student.model(input_ids=ids, labels=ids).loss.item()
            acc = evaluate_model(student, valid, args.task, "validation", mode="loglikelihood", batch_size=16).acc
            layers = student.model.config.num_hidden_layers
            print(f"{keep:40s} {layers:2d} layers  {nll:6.2f} nats/token  validation acc {acc:.3f}", flush=True)


if __name__ == "__main__":
    main()
