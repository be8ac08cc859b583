"""Two evaluations side by side on one machine: every process with all CPUs' threads (torch's
default) vs each with its share (TINYSTUDENT_CONCURRENT=2), against one evaluation alone.

Each configuration runs the same `tinystudent eval` command(s) in fresh processes in this one
command; the wall time of the pair is compared with running the two one after the other.

    .venv/bin/python bench/bench_threads.py --model HuggingFaceTB/SmolLM2-135M-Instruct --limit 40
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def evaluate(args, env: dict, copies: int) -> float:
    """Wall seconds for `copies` identical evaluations started together."""
    command = [
        sys.executable,
        "-m",
        "tinystudent",
        "eval",
        "--model",
        args.model,
        "--task",
        args.task,
        "--split",
        args.split,
        "--limit",
        str(args.limit),
        "--json",
        "--db",
        args.db,
    ]
    started = time.perf_counter()
    running = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(copies)
    ]
    for process in running:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"eval failed: {err[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--db", default="/tmp/bench_threads.sqlite")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TINYSTUDENT_CONCURRENT")}
    evaluate(args, base, 1)  # warm the model cache and the page cache
    alone = evaluate(args, base, 1)
    greedy = evaluate(args, {**base, "TINYSTUDENT_CONCURRENT": "1"}, 2)
    shared = evaluate(args, {**base, "TINYSTUDENT_CONCURRENT": "2"}, 2)
    print(f"{os.cpu_count()} CPUs; {args.model} on {args.task}/{args.split}, {args.limit} questions per eval")
    print(f"one eval alone, all threads            : {alone:7.1f} s  (two in a row: {2 * alone:7.1f} s)")
    print(f"two side by side, all threads each     : {greedy:7.1f} s  ({2 * alone / greedy:.2f}x two in a row)")
    print(f"two side by side, a share each (ours)  : {shared:7.1f} s  ({2 * alone / shared:.2f}x two in a row)")
    print(f"sharing threads vs all threads each: {greedy / shared:.2f}x faster")


if __name__ == "__main__":
    main()
