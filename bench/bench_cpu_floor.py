"""How fast this CPU could score a task or read prompts at best, in float32, from measured rates.

A lower bound on the time of any exact float32 scorer (ours, lm-evaluation-harness, llama.cpp
on unquantised weights): the model's matrix products for every prompt token at the best
matrix-product rate measured here, plus causal attention over each prompt at the rate of
PyTorch's fastest CPU kernel, measured on the task's own prompt lengths. Norms, activations and
rotary embeddings are left out, so the real floor is higher. Prints the floor beside the time a
goal asks for (`--goal-seconds`), and the share of the floor each part takes.

    .venv/bin/python bench/bench_cpu_floor.py --task bioasq --split test --goal-seconds 107.6
"""

from __future__ import annotations

import argparse
import time

import torch


def best_rate(shapes: list[tuple[int, int]], rows: int, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of the model's linear shapes (in, out) on `rows` rows, by MKL (F.linear) and by
    oneDNN on reordered weights; the best of `repeats` timings of the whole set."""
    x = {k: torch.randn(rows, k) for k, _ in shapes}
    weights = [torch.randn(n, k) for k, n in shapes]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
    flops = sum(2 * rows * k * n for k, n in shapes)

    def mkl() -> None:
        for (k, _), w in zip(shapes, weights):
            torch.nn.functional.linear(x[k], w)

    def onednn() -> None:
        for (k, _), p in zip(shapes, packed):
            torch.ops.mkldnn._linear_pointwise(x[k], p, None, "none", [], "")

    rates = {}
    for name, run in (("MKL", mkl), ("oneDNN, reordered", onednn)):
        run()
        best = min(_timed(run) for _ in range(repeats))
        rates[name] = flops / best / 1e9
    return rates


def _timed(fn, *args, **kwargs) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - started


def attention_seconds(lengths: list[int], heads: int, head_dim: int, layers: int) -> float:
    """Causal attention of every prompt alone (no padding), one layer timed, times `layers`."""
    attend = torch.nn.functional.scaled_dot_product_attention
    total = 0.0
    for length in lengths:
        q, k, v = (torch.randn(1, heads, length, head_dim) for _ in range(3))
        attend(q, k, v, is_causal=True)  # warm
        total += _timed(attend, q, k, v, is_causal=True)
    return total * layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--task", default="bioasq")
    parser.add_argument("--split", default="test")
    parser.add_argument("--goal-seconds", type=float, default=120.0, help="the time the goal allows")
    parser.add_argument("--rows", type=int, default=4096, help="rows per matrix product when measuring rates")
    args = parser.parse_args()

    from tinystudent.evaluation.prompts import choice_context, prompt_style
    from tinystudent.log import quiet_libraries
    from tinystudent.models import count_parameters, load_model
    from tinystudent.tasks import load_task

    quiet_libraries()
    loaded = load_model(args.model, device="cpu", dtype="float32")
    config = loaded.model.config
    examples = load_task(args.task).split(args.split)
    style = prompt_style(args.task, examples)
    lengths = [len(loaded.tokenizer.encode(choice_context(ex, style), add_special_tokens=False)) for ex in examples]
    params = count_parameters(loaded.model)["non_embedding"]
    hidden, inner = config.hidden_size, config.intermediate_size
    head_dim = hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden)]
    shapes += [(hidden, inner), (hidden, inner), (inner, hidden)]
    rates = best_rate(shapes, args.rows)
    best = max(rates.values())
    matmul_flops = 2 * params * sum(lengths)
    matmul_s = matmul_flops / (best * 1e9)
    attention_s = attention_seconds(lengths, config.num_attention_heads, head_dim, config.num_hidden_layers)
    floor = matmul_s + attention_s
    print(
        f"{args.model} on {args.task}/{args.split}: {len(lengths)} prompts, {sum(lengths):,} tokens; "
        f"{params / 1e6:.1f}M non-embedding parameters; float32, {torch.get_num_threads()} threads"
    )
    for name, rate in rates.items():
        print(f"matrix products, {name:18s}: {rate:6.1f} GFLOP/s (the model's 7 linear shapes, {args.rows} rows)")
    print(f"matrix products, {matmul_flops / 1e12:.2f} TFLOP at the best rate : {matmul_s:7.1f} s")
    print(f"causal attention (PyTorch flash kernel, each prompt alone): {attention_s:7.1f} s")
    print(f"floor (norms, activations, rotary left out)               : {floor:7.1f} s")
    print(f"goal                                                      : {args.goal_seconds:7.1f} s")
    verdict = "within reach" if floor < args.goal_seconds else "out of reach on this machine in float32"
    print(f"floor / goal: {floor / args.goal_seconds:.2f} ({verdict})")


if __name__ == "__main__":
    main()
