"""Teacher generation throughput against transformers' `generate` on all prompts in one batch
(the baseline): our local backend one prompt at a time and in batches, llama.cpp on the model's
GGUF file (when llama-cpp-python is installed: `pip install 'tinystudent[llamacpp]'`), and over
HTTP against `tinystudent serve` with concurrent vs sequential requests.

Every configuration generates greedily for the same chain-of-thought prompts (ARC questions) in one
process. Prints generated tokens per second, the ratio to the baseline, and how often each
configuration wrote the same text as the baseline (batching changes float rounding, which can flip
a near-tie between two tokens; llama.cpp computes in the file's quantised form).

    .venv/bin/python bench/bench_generation.py --n 64 --max-new-tokens 48 --skip-http
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tinystudent.log import quiet_libraries
from tinystudent.models import load_model
from tinystudent.tasks import load_task
from tinystudent.teachers import GenerationSettings, HttpTeacher, LocalTeacher, get_strategy
from tinystudent.teachers.prompts import build_prompt


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, device: str, batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tinystudent",
        "serve",
        model,
        "--port",
        str(port),
        "--device",
        device,
        "--max-batch-size",
        str(batch),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start within 300 s")


def run(teacher, prompts: list[str], settings: GenerationSettings) -> tuple[float, int, list[str]]:
    """Seconds, generated tokens and texts for all prompts."""
    texts: list[str] = [""] * len(prompts)
    tokens = 0
    started = time.perf_counter()
    for index, result in teacher.generate(prompts, settings, [0] * len(prompts)):
        if isinstance(result, Exception):
            raise SystemExit(f"prompt {index} failed: {result}")
        texts[index] = result.text
        tokens += result.completion_tokens or 0
    return time.perf_counter() - started, tokens, texts


def hf_generate_one_batch(loaded, prompts: list[str], max_new_tokens: int) -> tuple[float, int, list[str]]:
    """transformers' `generate`, greedy, on every prompt at once (left-padded): seconds, generated
    tokens and texts. The prompts are wrapped as our local backend wraps them."""
    import torch

    tokenizer = loaded.tokenizer
    texts = [LocalTeacher(loaded).full_prompt(p) for p in prompts]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    seconds = time.perf_counter() - started
    new = out[:, batch["input_ids"].shape[1] :]
    ends = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    lengths = [next((i + 1 for i, t in enumerate(row.tolist()) if t in ends), len(row)) for row in new]
    decoded = [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(new, lengths)]
    return seconds, sum(lengths), decoded


def llama_cpp_teacher(model: str):
    """Our llama.cpp backend on the model's GGUF file, or None when it cannot run here (said why)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama.cpp: skipped, llama-cpp-python is not installed (pip install 'tinystudent[llamacpp]')")
        return None
    from tinystudent.models.loading import gguf_file
    from tinystudent.teachers.llamacpp import LlamaCppTeacher

    try:
        path, identity = gguf_file(model)
    except FileNotFoundError as error:
        print(f"llama.cpp: skipped, {error}")
        return None
    return LlamaCppTeacher(path, identity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--n", type=int, default=16, help="prompts")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="local batch and server batch")
    parser.add_argument(
        "--local-batches", type=int, nargs="+", help="local backend batch sizes (default: 1, --batch-size, --n)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP requests in flight")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    quiet_libraries()

    loaded = load_model(args.model, device=args.device)
    strategy = get_strategy("cot")
    prompts = [build_prompt(strategy, ex, []) for ex in load_task(args.task).split(args.split)[: args.n]]
    # No stop strings: every configuration runs to the same token limit unless the model ends.
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    chat = bool(getattr(loaded.tokenizer, "chat_template", None))
    run(LocalTeacher(loaded, batch_size=2), prompts[:2], GenerationSettings(max_new_tokens=2))  # warm-up

    rows = []
    baseline = hf_generate_one_batch(loaded, prompts, args.max_new_tokens)
    rows.append((f"transformers generate, one batch of {len(prompts)} (baseline)", baseline))
    for size in args.local_batches or [1, args.batch_size, len(prompts)]:
        label = "local, one prompt at a time" if size == 1 else f"local, batches of {size}"
        rows.append((label, run(LocalTeacher(loaded, batch_size=size), prompts, settings)))
    llama = llama_cpp_teacher(args.model)
    if llama is not None:
        run(llama, prompts[:1], GenerationSettings(max_new_tokens=2))  # warm-up
        rows.append((f"llama.cpp on {Path(llama.name).name}, one at a time", run(llama, prompts, settings)))
        llama.close()
    if not args.skip_http:
        log = Path(tempfile.mkdtemp()) / "serve.log"
        device = str(loaded.device)
        del loaded  # the server loads its own copy
        server, base_url = start_server(args.model, device, args.batch_size, log)
        try:
            endpoint = "chat" if chat else "completions"  # the server renders the same chat template
            for concurrency in (1, args.concurrency):
                teacher = HttpTeacher(args.model, base_url, endpoint=endpoint, concurrency=concurrency, timeout=600)
                run(teacher, prompts[:1], GenerationSettings(max_new_tokens=2))  # warm-up
                label = (
                    "HTTP to serve, one request at a time"
                    if concurrency == 1
                    else f"HTTP to serve, {concurrency} concurrent requests"
                )
                rows.append((label, run(teacher, prompts, settings)))
                teacher.close()
        finally:
            server.kill()
            server.wait()

    base_s, base_tokens, base_texts = baseline
    print(
        f"model {args.model}; {len(prompts)} prompts, up to {args.max_new_tokens} new tokens each, greedy; "
        f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    print(
        f"{'configuration':44s} {'seconds':>8s} {'tokens':>7s} {'tokens/s':>9s} {'vs baseline':>12s} {'same text':>10s}"
    )
    for label, (seconds, tokens, texts) in rows:
        same = sum(a == b for a, b in zip(texts, base_texts))
        ratio = (tokens / seconds) / (base_tokens / base_s)
        print(f"{label:44s} {seconds:8.2f} {tokens:7d} {tokens / seconds:9.1f} {ratio:11.2f}x {same:5d}/{len(texts)}")


if __name__ == "__main__":
    main()
