"""Peak memory of token-level logit distillation: chunked (ours) vs the full-logits form.

One training step (forward, cross-entropy + forward-KL logit distillation from a teacher of the
same vocabulary, backward) on the same student, teacher and batch, three ways:

- baseline, unchunked: `model(...).logits` for student and teacher, [batch, tokens, vocabulary]
  each, then the divergence over them (what a plain implementation does);
- tinystudent, chunked + checkpointed: the output layer runs on `--chunk` target tokens at a
  time and backward recomputes each chunk's logits (the general path);
- tinystudent, chunked + fused (the default): each chunk's gradient is worked out in forward,
  so its logits are dropped at once and never recomputed.

Each runs in a fresh process; memory is the GPU allocator's peak over the step (or the process's
peak resident set on the CPU), reported in full and above what the models already held.

    .venv/bin/python bench/bench_logit_kd_memory.py                      # CPU, small sizes
    python bench/bench_logit_kd_memory.py --config qwen2.5-0.5b --device cuda --precision bf16 \\
        --batch 8 --seq 1024
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import CONFIGS, model_config  # noqa: E402

MODES = ("unchunked", "chunked", "fused")


def _memory_now(device) -> float:
    import torch

    from tinystudent.evaluation.cost import _read_vm_hwm_kb

    if device.type == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return (_read_vm_hwm_kb() or 0) / 1024


def one_step(mode: str, args) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tinystudent.distill.losses import forward_kl
    from tinystudent.distill.objectives import StudentBatch, StudentObjectives, teacher_states
    from tinystudent.distill.terms import TermWeights
    from tinystudent.evaluation.cost import MemoryMeter
    from tinystudent.models.batches import TokenBatch
    from tinystudent.models.heads import causal_head
    from tinystudent.models.loading import resolve_device

    device = resolve_device(args.device)
    fields = model_config(args.config)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(config).to(device).train()
    torch.manual_seed(1)
    teacher = AutoModelForCausalLM.from_config(config, dtype=autocast_dtype or torch.float32).to(device).eval()
    teacher.requires_grad_(False)
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=generator).to(device)
    mask = torch.ones_like(ids)
    target_mask = torch.ones_like(ids, dtype=torch.bool)
    target_mask[:, -1] = False
    next_ids = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype
        else torch.autocast(device.type, enabled=False)
    )

    def step() -> float:
        with autocast:
            if mode == "unchunked":
                logits = student(input_ids=ids, attention_mask=mask).logits
                with torch.no_grad():
                    teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
                logprobs = torch.log_softmax(logits[target_mask].float(), dim=-1)
                ce = -logprobs.gather(-1, next_ids[target_mask][:, None]).mean()
                kd = forward_kl(logits[target_mask], teacher_logits[target_mask], args.temperature).mean()
                loss = ce + kd
            else:
                batch = StudentBatch(
                    torch.zeros(args.batch, dtype=torch.long, device=device),
                    answer=TokenBatch(ids, mask, target_mask, next_ids),
                )
                objective = StudentObjectives(
                    student,
                    "causal",
                    weights=TermWeights({"answer": 1.0, "logit_kd": 1.0}),
                    temperature=args.temperature,
                    chunk_tokens=args.chunk,
                    fuse_head=mode == "fused",
                )
                states = teacher_states(teacher, "causal", causal_head(teacher), batch, True, [])
                loss = objective(batch, states)["loss"]
        loss.backward()
        return float(loss.detach())

    step()  # the first step allocates the gradients; measure the second
    student.zero_grad(set_to_none=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    before = _memory_now(device)
    meter = MemoryMeter(device)
    started = time.perf_counter()
    with meter.measure():
        loss = step()
    seconds = time.perf_counter() - started
    return {
        "mode": mode,
        "loss": loss,
        "peak_mb": meter.peak_mb,
        "above_models_mb": meter.peak_mb - before,
        "seconds": seconds,
        "params": sum(p.numel() for p in student.parameters()),
    }


def _child(mode: str, args, queue) -> None:
    from tinystudent.log import quiet_libraries

    quiet_libraries()
    queue.put(one_step(mode, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help=f"a preset ({', '.join(CONFIGS)}) or a JSON config file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=256, help="target tokens per chunk")
    parser.add_argument("--temperature", type=float, default=2.0)
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    rows = {}
    for mode in MODES:
        queue = context.Queue()
        process = context.Process(target=_child, args=(mode, args, queue))
        process.start()
        rows[mode] = queue.get()
        process.join()
    base = rows["unchunked"]
    fields = model_config(args.config)
    print(
        f"model: {args.config}-shaped ({base['params']:,} parameters, vocabulary {fields['vocab_size']:,}), "
        f"student and teacher; batch {args.batch} x {args.seq} tokens; {args.device}, {args.precision}; "
        f"chunk {args.chunk} tokens"
    )
    names = {
        "unchunked": "baseline unchunked (full logits)",
        "chunked": "tinystudent chunked + checkpointed",
        "fused": "tinystudent chunked + fused",
    }
    for mode in MODES:
        row = rows[mode]
        print(
            f"{names[mode]:38s}: peak {row['peak_mb']:10,.0f} MB, above the models {row['above_models_mb']:10,.0f} MB, "
            f"step {row['seconds']:7.2f} s, loss {row['loss']:.5f}"
        )
    for mode in ("chunked", "fused"):
        row = rows[mode]
        print(
            f"ratio {names[mode]} / unchunked: peak {row['peak_mb'] / base['peak_mb']:.2f}x, "
            f"above the models {row['above_models_mb'] / max(base['above_models_mb'], 1e-9):.2f}x, "
            f"time {row['seconds'] / base['seconds']:.2f}x"
        )


if __name__ == "__main__":
    main()
