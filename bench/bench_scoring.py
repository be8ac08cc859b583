"""Choice scoring: prompt run once per question (KV cache reused) vs one forward pass per choice.

Times both on the same model and questions in one process, prints the speed-up and checks that
both pick the same answer for every question (and how far their log-likelihoods differ).

    .venv/bin/python bench/bench_scoring.py --model HuggingFaceTB/SmolLM2-135M-Instruct --n 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tinystudent.evaluation.prompts import choice_context, choice_continuations, prompt_style
from tinystudent.evaluation.scoring import score_choices, score_choices_naive
from tinystudent.log import quiet_libraries
from tinystudent.models import load_model
from tinystudent.models.requests import ChoiceRequest
from tinystudent.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    quiet_libraries()

    loaded = load_model(args.model, device=args.device)
    examples = load_task(args.task).split(args.split)[: args.n]
    style = prompt_style(args.task, examples)
    requests = [ChoiceRequest(choice_context(ex, style), choice_continuations(ex)) for ex in examples]
    score_choices(loaded.model, loaded.tokenizer, loaded.kind, requests[:2], args.batch_size)  # warm-up

    started = time.perf_counter()
    fast = score_choices(loaded.model, loaded.tokenizer, loaded.kind, requests, args.batch_size)
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    naive = score_choices_naive(loaded.model, loaded.tokenizer, requests)
    naive_s = time.perf_counter() - started

    same = sum(int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(fast, naive))
    max_diff = max(abs(x - y) for a, b in zip(fast, naive) for x, y in zip(a, b))
    choices = sum(len(r.continuations) for r in requests)
    print(f"model {args.model} on {loaded.device}; {len(requests)} questions, {choices} choices")
    print(f"baseline  one forward per choice : {naive_s:8.2f} s  ({len(requests) / naive_s:6.2f} questions/s)")
    print(f"tinystudent prompt once, batched : {fast_s:8.2f} s  ({len(requests) / fast_s:6.2f} questions/s)")
    print(f"speed-up: {naive_s / fast_s:.2f}x")
    print(f"same prediction on {same}/{len(requests)} questions; max |loglik difference| {max_diff:.2e}")
    if same != len(requests):
        raise SystemExit("the two scorers disagree")


if __name__ == "__main__":
    main()
