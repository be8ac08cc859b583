"""Training throughput and peak memory: tinystudent's loop vs a plain `transformers.Trainer`.

Both train the same randomly initialised model, from the same saved folder, on the same
sequences (prompt + target, loss on the target tokens), with the same batch, steps, AdamW,
learning rate, clipping and precision. Tokens/s counts every token of every sequence over steps
2..N (the first step, with its one-off warm-up, is left out of both). Peak memory is the GPU
allocator's peak, or on the CPU the peak resident set of a fresh process per run (an earlier
run's freed memory would otherwise stay counted). Model FLOPs utilisation uses
6 N + 12 n_layers d_model T FLOPs per token (Chinchilla / PaLM), given the chip's peak.

    .venv/bin/python bench/bench_training.py                      # CPU: a small model
    python bench/bench_training.py --config qwen2.5-0.5b --device cuda --precision bf16 \\
        --batch 8 --seq 1024 --steps 20 --peak-tflops 989         # GPU: Qwen2.5-0.5B-shaped
    .venv/bin/python bench/bench_training.py --data bioasq --config smollm2-17 --batch 8 --steps 8

With `--data bioasq` the sequences are real: BioASQ training questions (evidence cut to 256
tokens) with their answers and one teacher's rationale, in SmolLM2's tokenizer, so their lengths
vary. Both sides see the same sequences, one epoch, and the Trainer pads each batch to its
longest sequence (its usual collator); we pack. The rate counted is then real, non-padding
tokens per second over every step.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    # about 16M parameters, most in a SmolLM2-sized output layer: fits a CPU run in seconds
    "tiny": {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
    },
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
    },
    # the SmolLM2 student with 17 of its 30 layers (the bioasq study's largest cut)
    "smollm2-17": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 17,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
    },
}

WORDS = (
    "light water plant energy heat cold rock soil cell leaf root animal sun moon star earth "
    "gas liquid solid force motion speed mass weight sound wave magnet metal wood glass salt "
    "sugar oxygen carbon nitrogen cloud rain snow wind river ocean mountain valley desert"
).split()


def model_config(name: str) -> dict:
    if name in CONFIGS:
        return dict(CONFIGS[name])
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"--config: {name} is neither a preset ({', '.join(CONFIGS)}) nor a JSON file")
    return json.loads(path.read_text())


def build_tokenizer(folder: Path):
    """A byte-level BPE tokenizer trained here (no download), saved in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(folder)
    return fast


def build_student(config_name: str, root: Path, real_tokenizer: bool = False) -> Path:
    """A randomly initialised model folder with our tokenizer (or SmolLM2's, for real text)."""
    from transformers import AutoTokenizer

    from tinystudent.models.students import fresh_student

    if real_tokenizer:
        from tinystudent.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").path)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    else:
        tokenizer = build_tokenizer(root / "tokenizer")
    config = {
        **model_config(config_name),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
    }
    folder = fresh_student(config, root / "student", seed=0)
    tokenizer.save_pretrained(folder)
    return folder


def build_data(n: int, seed: int = 0):
    """Questions with long texts, so every prompt and target is cut to the same token count."""
    from tinystudent.tasks.schema import Example

    rng = random.Random(seed)
    examples, rationales = [], {}
    for i in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(400))
        ex = Example(f"b{i}", question, ("heat", "light", "water", "soil"), rng.randrange(4))
        examples.append(ex)
        rationales[ex.id] = " ".join(rng.choice(WORDS) for _ in range(3000))
    return examples, {"bench": rationales}


def bioasq_data(n: int):
    """The first `n` BioASQ training questions and the first bundled teacher's rationales."""
    from tinystudent.tasks import load_task
    from tinystudent.tasks.bundled import bundled_rationales

    examples = load_task("bioasq").split("train")[:n]
    teacher, by_id = next(iter(sorted(bundled_rationales("train").items())))
    return examples, {"bench": {ex.id: by_id[ex.id][0] for ex in examples if ex.id in by_id}}


def data(args):
    n = args.steps * args.batch
    return bioasq_data(n) if args.data == "bioasq" else build_data(n)


def train_config(args, prompt_tokens: int):
    from tinystudent.distill import TrainConfig

    if args.data == "bioasq":
        return TrainConfig(
            steps=args.steps,
            batch_size=args.batch,
            lr=1e-4,
            warmup_ratio=0.0,
            weights={"answer": 1.0, "rationale": 1.0},
            max_input_tokens=256,
            max_rationale_tokens=128,
            eval_before=False,
            precision=args.precision,
            device=args.device,
            seed=0,
            packing=not args.no_packing,
            gradient_checkpointing=args.gradient_checkpointing,
            kd_chunk_tokens=args.chunk,
        )
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=1e-4,
        warmup_ratio=0.0,
        weights={"answer": 0.0, "rationale": 1.0},
        max_input_tokens=prompt_tokens,
        max_rationale_tokens=args.seq - prompt_tokens - 1,
        eval_before=False,
        precision=args.precision,
        device=args.device,
        seed=0,
        gradient_checkpointing=args.gradient_checkpointing,
        kd_chunk_tokens=args.chunk,
    )


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_tinystudent(args, folder: Path, work: Path) -> dict:
    import torch

    from tinystudent.distill import train_student

    examples, rationales = data(args)
    stamps = [time.perf_counter()]

    def stamp(progress: dict) -> None:
        _sync(args.device)
        stamps.append(time.perf_counter())

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = train_student(
        str(folder),
        examples,
        [],
        train_config(args, 32),
        work / "run",
        rationales=rationales,
        task="bench",
        resume=False,
        on_step=stamp,
    )
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else result.peak_memory_mb
    first_loss = result.loss_history[0]["loss"]
    timed = stamps[-1] - stamps[0] if args.data == "bioasq" else stamps[-1] - stamps[1]
    return {"seconds": timed, "peak_mb": peak, "first_loss": first_loss, "params": result.params}


def run_trainer(args, folder: Path, work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from tinystudent.distill.data import build_features
    from tinystudent.evaluation.cost import MemoryMeter
    from tinystudent.models.loading import resolve_device

    examples, rationales = data(args)
    config = train_config(args, 32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    style = "bioasq" if args.data == "bioasq" else "arc"
    features, _ = build_features(
        examples,
        tokenizer,
        kind="causal",
        style=style,
        rationales=rationales,
        choice_logprobs={},
        rationale_prompt=config.rationale_prompt,
        max_input=config.max_input_tokens,
        max_answer=config.max_answer_tokens,
        max_rationale=config.max_rationale_tokens,
    )
    rows = []
    for ex in examples:
        pairs = [features[ex.id].rationales["bench"]] if "bench" in features[ex.id].rationales else []
        if config.weights.answer > 0:
            pairs.append((features[ex.id].prompt, features[ex.id].choices[features[ex.id].gold]))
        for prompt, target in pairs:
            rows.append({"input_ids": prompt + target, "labels": [-100] * len(prompt) + target})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(batch):  # pad to the batch's longest sequence, as transformers' collators do
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
        labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    stamps = [time.perf_counter()]

    class Stamp(TrainerCallback):
        def on_step_end(self, *_, **__):
            _sync(args.device)
            stamps.append(time.perf_counter())

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    device = resolve_device(args.device)
    training = TrainingArguments(
        output_dir=str(work / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=len(rows) // args.steps if args.data == "bioasq" else args.batch,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        use_cpu=device.type == "cpu",
        gradient_checkpointing=args.gradient_checkpointing,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=training, train_dataset=rows, data_collator=collate, callbacks=[Stamp()])
    meter = MemoryMeter(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with meter.measure():
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    timed = stamps[-1] - stamps[0] if args.data == "bioasq" else stamps[-1] - stamps[1]
    real = sum(len(r["input_ids"]) for r in rows)
    return {
        "seconds": timed,
        "peak_mb": meter.peak_mb,
        "first_loss": losses[0] if losses else None,
        "real_tokens": real,
    }


def _child(kind: str, args, folder: str, queue) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tinystudent.log import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as work:
        runner = run_tinystudent if kind == "tinystudent" else run_trainer
        queue.put(runner(args, Path(folder), Path(work)))


def measure(kind: str, args, folder: Path) -> dict:
    """Run one side in a fresh process, so its memory peak is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(kind, args, str(folder), queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help=f"a preset ({', '.join(CONFIGS)}) or a JSON config file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--chunk", type=int, default=1024, help="kd_chunk_tokens of our loop")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--data",
        default="synthetic",
        choices=["synthetic", "bioasq"],
        help="synthetic: every sequence --seq tokens; bioasq: real questions and rationales",
    )
    parser.add_argument("--no-packing", action="store_true", help="our loop pads instead of packing")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the chip's peak FLOP/s in TFLOP/s at this precision, for model FLOPs utilisation",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    from tinystudent.log import quiet_libraries
    from tinystudent.models import count_parameters, load_model

    quiet_libraries()
    with tempfile.TemporaryDirectory() as root:
        folder = build_student(args.config, Path(root), real_tokenizer=args.data == "bioasq")
        model = load_model(str(folder), device="cpu", dtype="float32").model
        params, config = count_parameters(model)["total"], model.config
        del model
        baseline = measure("trainer", args, folder)
        ours = measure("tinystudent", args, folder)

    tokens = baseline["real_tokens"] if args.data == "bioasq" else args.batch * args.seq * (args.steps - 1)
    flops_per_token = 6 * params + 12 * config.num_hidden_layers * config.hidden_size * args.seq
    print(
        f"model: {args.config}-shaped, {params:,} parameters, random init; device {args.device}, "
        f"precision {args.precision}; "
        + (
            f"{args.batch} BioASQ questions (answer + rationale) a step"
            if args.data == "bioasq"
            else f"batch {args.batch} x {args.seq} tokens"
        )
        + f", {args.steps} steps "
        f"(timed: {'every step, real tokens' if args.data == 'bioasq' else f'steps 2..{args.steps}'}); "
        f"memory: {'GPU allocator peak' if args.device.startswith('cuda') else 'peak RSS of a fresh process'}"
    )
    rows = [("baseline transformers.Trainer", baseline), ("tinystudent loop", ours)]
    for name, row in rows:
        rate = tokens / row["seconds"]
        row["tokens_per_s"] = rate
        mfu = f", MFU {100 * flops_per_token * rate / (args.peak_tflops * 1e12):5.1f}%" if args.peak_tflops else ""
        print(
            f"{name:32s}: {rate:12,.0f} tokens/s, peak memory {row['peak_mb']:10,.0f} MB, "
            f"first-step loss {row['first_loss']:.4f}{mfu}"
        )
    print(
        f"ratio tinystudent / Trainer: tokens/s {ours['tokens_per_s'] / baseline['tokens_per_s']:.2f}x, "
        f"peak memory {ours['peak_mb'] / baseline['peak_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
