"""Logit distillation from stored teacher logits vs from the live teacher: a second student's
training tokens/s, and the bytes each target token costs in the database.

The teacher is SmolLM2-135M-Instruct (its offline copy), the students a layer cut of it
(`--keep-layers`, weights copied), the task's training questions the same for every run, the
objective answer + logit_kd. Three runs share one results database:

1. the first student, with `teacher_logits_top_k`: the teacher's top-k log-probabilities of every
   training sequence are computed before training and stored (its wall time includes that);
2. a second student (another seed) with the live teacher, which runs on every micro-batch;
3. the same second student from the stored logits: no teacher forward at all.

Tokens/s is the training loop's own (`TrainResult.tokens_per_s`: every token of every batch over
the optimizer steps' time; evaluation and the precompute are outside it), so 2 and 3 differ only by
the teacher's forward against reading and decompressing k ids and log-probabilities per token.
The goal is a ratio of at least 2x.

    .venv/bin/python bench/bench_stored_logits.py                 # CPU
    python bench/bench_stored_logits.py --device cuda --precision bf16 --batch 16 --steps 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TEACHER = "HuggingFaceTB/SmolLM2-135M-Instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=TEACHER, help="the teacher (and the model the students are cut from)")
    parser.add_argument("--keep-layers", default="spread:6", help="the students' layers (scale_down's keep)")
    parser.add_argument("--task", default="bioasq", help="a named task or benchmark files (its train split)")
    parser.add_argument("--top-k", type=int, default=64, help="teacher_logits_top_k")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="teacher_logits_dtype")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train", type=int, default=None, help="training questions [steps x batch]")
    parser.add_argument("--max-input-tokens", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()

    from tinystudent.distill import TrainConfig, train_student
    from tinystudent.distill.stored_logits import raw_bytes_per_token, stored_bytes_per_token
    from tinystudent.log import quiet_libraries
    from tinystudent.models import count_parameters, load_model
    from tinystudent.models.students import scale_down
    from tinystudent.store import Store
    from tinystudent.tasks import load_task

    quiet_libraries()
    data = load_task(args.task)
    train = data.split("train")[: args.train or args.steps * args.batch]
    valid = data.split("validation")[:2]
    teacher = load_model(args.teacher, device=args.device, dtype="bfloat16" if args.precision == "bf16" else "float32")
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root)
        student = str(scale_down(args.teacher, args.keep_layers, folder / "student"))
        db = folder / "results.sqlite"
        params = count_parameters(load_model(student, device="cpu", dtype="float32").model)["total"]

        def run(name: str, seed: int, top_k: int | None):
            config = TrainConfig(
                steps=args.steps,
                batch_size=args.batch,
                seed=seed,
                device=args.device,
                precision=args.precision,
                eval_before=False,
                valid_limit=2,
                max_input_tokens=args.max_input_tokens,
                weights={"answer": 1.0, "logit_kd": 1.0},
                teacher_logits_top_k=top_k,
                teacher_logits_dtype=args.dtype,
            )
            started = time.perf_counter()
            result = train_student(
                student, train, valid, config, folder / name, teacher=teacher, task=args.task, teacher_logits_db=db
            )
            return result, time.perf_counter() - started

        first, first_wall = run("first", 0, args.top_k)
        live, _ = run("live", 1, None)
        stored, _ = run("stored", 1, args.top_k)
        with Store(db) as store:
            per_token = stored_bytes_per_token(store)

    print(
        f"teacher {args.teacher}; students {args.keep_layers} of it ({params:,} parameters); task {args.task}, "
        f"{len(train)} training questions; {args.steps} steps x batch {args.batch}; answer + logit_kd; "
        f"device {args.device}, precision {args.precision}"
    )
    print(
        f"first student (computes and stores top-{args.top_k} {args.dtype}): {first_wall:,.1f} s wall, "
        f"{first.tokens_per_s:,.0f} training tokens/s"
    )
    print(f"second student, live teacher         : {live.tokens_per_s:12,.0f} training tokens/s")
    print(f"second student, stored teacher logits: {stored.tokens_per_s:12,.0f} training tokens/s")
    ratio = stored.tokens_per_s / live.tokens_per_s if live.tokens_per_s else float("nan")
    print(f"ratio stored / live: {ratio:.2f}x (goal >= 2x)")
    print(
        f"stored: {per_token or 0:,.1f} bytes per target token "
        f"({raw_bytes_per_token(args.top_k, args.dtype)} uncompressed, zlib)"
    )


if __name__ == "__main__":
    main()
