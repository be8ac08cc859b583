"""Bits per byte: checked by hand on two tokenizers, windows, the command, and the real SmolLM2."""

from __future__ import annotations

import copy
import hashlib
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tinystudent.cli import app
from tinystudent.evaluation.bits_per_byte import TokenWindow, bits_per_byte, task_corpus, token_windows, truncate_utf8
from tinystudent.models import load_model
from tinystudent.store import Store
from tinystudent.tasks import Example

# Non-ASCII on purpose: "°", "é" and "—" take 2, 2 and 3 bytes, so bytes != characters.
TEXT = (
    "Question: Which gas do plants take in? Water boils at 100°C.\n"
    "Café answer: carbon dioxide — because photosynthesis needs it."
)


def hand_bits_per_byte(model, ids: list[int], start: int, n_bytes: int) -> float:
    """One plain forward over [start] + ids; -log2 p of every text token, over the bytes."""
    tokens = torch.tensor([[start] + ids])
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[0].double()
    nll_bits = 0.0
    for position in range(1, tokens.shape[1]):
        probs = torch.softmax(logits[position - 1], dim=-1)
        nll_bits -= math.log2(probs[tokens[0, position]].item())
    return nll_bits / n_bytes


def char_tokenizer(alphabet: str):
    """A tokenizer with one token per character (no merges): a different tokenization."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for char in sorted(set(alphabet)):
        vocab.setdefault(char, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def char_gpt2(tmp_path_factory):
    """A tiny random GPT-2 (learned absolute positions, 24 of them) with a character tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    tokenizer = char_tokenizer(TEXT)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=24,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    path = tmp_path_factory.mktemp("tiny") / "char-gpt2"
    GPT2LMHeadModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def test_windows_listed_by_hand():
    # 21 positions (start token + 20 text tokens), windows of 8 moving on by 4.
    assert token_windows(21, 8, 4) == [
        TokenWindow(0, 8, 1),
        TokenWindow(4, 12, 8),
        TokenWindow(8, 16, 12),
        TokenWindow(12, 20, 16),
        TokenWindow(13, 21, 20),
    ]
    assert token_windows(5, 8, 4) == [TokenWindow(0, 5, 1)]
    for window, stride in ((8, 8), (8, 0), (1, 1)):
        with pytest.raises(ValueError, match="stride|window"):
            token_windows(21, window, stride)


def test_byte_level_bpe_llama_by_hand(tiny_causal):
    loaded = load_model(str(tiny_causal), device="cpu")
    ids = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    n_bytes = len(TEXT.encode("utf-8"))
    assert n_bytes == len(TEXT) + 1 + 1 + 2  # °, é: one extra byte each; —: two extra
    start = loaded.tokenizer.eos_token_id  # the tiny tokenizer has no BOS: EOS goes in front
    expected = hand_bits_per_byte(loaded.model, ids, start, n_bytes)
    got = bits_per_byte(loaded.model, loaded.tokenizer, TEXT, window=512)
    assert got["tokens"] == len(ids) and got["bytes"] == n_bytes and got["windows"] == 1
    assert got["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
    assert got["nll_bits"] == pytest.approx(expected * n_bytes, rel=1e-5)
    assert got["lossless"] and got["start_token"] == "<eos>"


def test_windows_score_each_token_once_with_the_listed_context(tiny_causal):
    loaded = load_model(str(tiny_causal), device="cpu")
    ids = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    tokens = [loaded.tokenizer.eos_token_id] + ids
    window, stride = 12, 5
    # By hand: the first window predicts positions 1..11, each later one the next 5 positions
    # (fewer at the end) from the 12 tokens that end with them.
    nll_nats, end = 0.0, 0
    while end < len(tokens):
        new_end = min(window if end == 0 else end + stride, len(tokens))
        begin = max(0, new_end - window)
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([tokens[begin:new_end]])).logits[0].double()
        for position in range(max(end, 1), new_end):
            nll_nats -= torch.log_softmax(logits[position - begin - 1], -1)[tokens[position]].item()
        end = new_end
    got = bits_per_byte(loaded.model, loaded.tokenizer, TEXT, window=window, stride=stride, batch_size=3)
    assert got["windows"] == len(token_windows(len(tokens), window, stride)) > 3
    assert got["nll_bits"] == pytest.approx(nll_nats / math.log(2), rel=1e-5)


def test_character_tokenizer_gpt2_by_hand(char_gpt2):
    loaded = load_model(str(char_gpt2), device="cpu")
    short = "Café at 100°C — yes."
    ids = loaded.tokenizer(short, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(short) < len(short.encode("utf-8"))  # one token per character
    expected = hand_bits_per_byte(loaded.model, ids, 1, len(short.encode("utf-8")))
    got = bits_per_byte(loaded.model, loaded.tokenizer, short)
    assert got["window"] == 24  # capped at GPT-2's 24 positions
    assert got["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
    # The long text needs several windows of 24 positions; every character is still predicted.
    long = bits_per_byte(loaded.model, loaded.tokenizer, TEXT, stride=8)
    assert long["tokens"] == len(TEXT) and long["windows"] == 1 + math.ceil((len(TEXT) + 1 - 24) / 8)
    assert long["bytes"] == len(TEXT.encode("utf-8")) and long["lossless"]
    unknown = bits_per_byte(loaded.model, loaded.tokenizer, "xyz")  # not in the alphabet
    assert unknown["lossless"] is False


def test_seq2seq_scored_as_an_unconditional_decoder(tiny_seq2seq):
    loaded = load_model(str(tiny_seq2seq), device="cpu")
    ids = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    start = loaded.model.config.decoder_start_token_id
    encoder = torch.tensor([[loaded.tokenizer.eos_token_id]])
    decoder = torch.tensor([[start] + ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(loaded.model(input_ids=encoder, decoder_input_ids=decoder).logits[0].double(), -1)
    nll_bits = -sum(logprobs[i - 1, decoder[0, i]].item() for i in range(1, decoder.shape[1])) / math.log(2)
    got = bits_per_byte(loaded.model, loaded.tokenizer, TEXT, kind="seq2seq")
    assert got["bits_per_byte"] == pytest.approx(nll_bits / len(TEXT.encode("utf-8")), rel=1e-5)
    assert got["model_kind"] == "seq2seq"


def test_refuses_encoders_and_empty_text(tiny_causal):
    loaded = load_model(str(tiny_causal), device="cpu")
    with pytest.raises(ValueError, match="encoder"):
        bits_per_byte(loaded.model, loaded.tokenizer, TEXT, kind="encoder")
    with pytest.raises(ValueError, match="empty"):
        bits_per_byte(loaded.model, loaded.tokenizer, "")


def test_task_corpus_and_truncation():
    examples = [
        Example("a", "Which gas?", ("oxygen", "carbon dioxide"), 1, rationale="Plants."),
        Example("b", "What is ice?", ("solid water", "gas"), 0),
    ]
    text = task_corpus(examples, {"b": ["Ice is frozen water.", "  "]})
    assert text == (
        "Question: Which gas?\nA. oxygen\nB. carbon dioxide\nPlants.\n\n"
        "Question: What is ice?\nA. solid water\nB. gas\nIce is frozen water.\n"
    )
    assert truncate_utf8("a°b", 2) == "a"  # never cuts a character in half
    assert truncate_utf8("a°b", 3) == "a°"


def test_loss_command_file_corpus_stored_and_reused(tiny_causal, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3, encoding="utf-8")
    db = tmp_path / "results.sqlite"
    args = ["loss", "--model", str(tiny_causal), "--corpus", str(corpus), "--window", "32", "--db", str(db), "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["corpus"] == f"file:{corpus.resolve()}"
    assert result["corpus_sha256"] == hashlib.sha256((TEXT * 3).encode("utf-8")).hexdigest()
    assert result["bytes"] == len((TEXT * 3).encode("utf-8")) and not result["cached"]
    assert result["bits_per_byte"] == pytest.approx(result["nll_bits"] / result["bytes"])
    with Store(db) as store:
        rows = store.model_losses(corpus_sha256=result["corpus_sha256"])
    assert len(rows) == 1 and rows[0]["bits_per_byte"] == result["bits_per_byte"]
    again = json.loads(CliRunner().invoke(app, args).stdout.strip().splitlines()[-1])
    assert again["cached"] and again["loss_id"] == result["loss_id"]
    truncated = CliRunner().invoke(app, args + ["--max-bytes", "50"])
    row = json.loads(truncated.stdout.strip().splitlines()[-1])
    assert row["bytes"] <= 50 and row["corpus"].endswith("[:50 bytes]") and not row["cached"]


def test_loss_command_task_text_with_cached_rationales(tiny_causal, shared_dir):
    from tinystudent.commands.loss import load_corpus
    from tinystudent.teachers import read_tinyllm, store_rationales

    task = str(shared_dir / "data" / "tinyllm" / "bioasq")
    command = ["loss", "-m", str(tiny_causal), "--task", task, "--max-bytes", "8000", "--json"]
    out = CliRunner().invoke(app, command)
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["corpus"] == f"task:{task}/train[:8000 bytes]" and result["bytes"] <= 8000
    assert result["corpus_origin"]["examples"] == 976
    assert result["corpus_origin"]["rationale_teachers"] == []
    # Once TinyLLM's rationales of the first questions are in the teacher cache, they join the text.
    imported = read_tinyllm(shared_dir / "data" / "tinyllm" / "bioasq", "train")
    first_ids = {q.id for q in imported.questions[:3]}
    with Store() as store:
        store_rationales(store, [r for r in imported.rationales if r.example_id in first_ids], task)
        _, text, origin = load_corpus(store, None, task, "train", None)
        _, flan_only, _ = load_corpus(store, None, task, "train", ["flan-t5-xl"])
        with pytest.raises(ValueError, match="no cached rationales of teacher 'gpt-9'"):
            load_corpus(store, None, task, "train", ["gpt-9"])
    assert origin["rationale_teachers"] == ["flan-t5-xl", "llama-2-chat-7b"]
    first = imported.questions[0].id
    by_teacher = {r.teacher: r.text for r in imported.rationales if r.example_id == first}
    assert by_teacher["flan-t5-xl"].strip() in text and by_teacher["llama-2-chat-7b"].strip() in text
    assert by_teacher["llama-2-chat-7b"].strip() not in flan_only
    assert text.index(by_teacher["llama-2-chat-7b"].strip()) < 7000  # inside the measured bytes
    with_rationales = json.loads(CliRunner().invoke(app, command).stdout.strip().splitlines()[-1])
    assert with_rationales["corpus"].startswith(f"task:{task}/train+rationales:flan-t5-xl,llama-2-chat-7b")
    assert with_rationales["corpus_sha256"] != result["corpus_sha256"]
    flan = CliRunner().invoke(app, command + ["--teachers", "flan-t5-xl,"])
    assert json.loads(flan.stdout.strip().splitlines()[-1])["corpus"].startswith(
        f"task:{task}/train+rationales:flan-t5-xl["
    )


def test_loss_command_bad_input(tiny_causal, tmp_path):
    neither = CliRunner().invoke(app, ["loss", "-m", str(tiny_causal)])
    assert neither.exit_code == 2 and "--corpus" in neither.output
    missing = CliRunner().invoke(app, ["loss", "-m", str(tiny_causal), "--corpus", str(tmp_path / "no.txt")])
    assert missing.exit_code == 2 and "no such corpus file" in missing.output
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"ok\xff\xfe")
    bad = CliRunner().invoke(app, ["loss", "-m", str(tiny_causal), "--corpus", str(binary)])
    assert bad.exit_code == 2 and "byte 2 is not UTF-8" in bad.output


def keep_first_layers(model, n_layers: int):
    """A copy of a Llama-style causal model with only its first `n_layers` decoder layers."""
    smaller = copy.deepcopy(model)
    smaller.model.layers = smaller.model.layers[:n_layers]
    smaller.config.num_hidden_layers = n_layers
    smaller.config.layer_types = (
        smaller.config.layer_types[:n_layers] if getattr(smaller.config, "layer_types", None) else None
    )
    return smaller


@pytest.mark.slow
def test_smollm2_bits_per_byte_rise_as_layers_are_removed(smollm2):
    from tinystudent.tasks import load_task

    text = truncate_utf8(task_corpus(load_task("arc_easy").split("train")), 3000)
    full = bits_per_byte(smollm2.model, smollm2.tokenizer, text)["bits_per_byte"]
    layers = smollm2.model.config.num_hidden_layers
    fewer = [
        bits_per_byte(keep_first_layers(smollm2.model, n), smollm2.tokenizer, text)["bits_per_byte"]
        for n in (layers * 2 // 3, layers // 3)
    ]
    assert 0.4 < full < 1.5  # a trained 135M model on plain English science questions
    assert full < fewer[0] < fewer[1]


def test_a_killed_measurement_resumes_where_it_stopped(tiny_causal, tmp_path):
    from tinystudent.evaluation.bits_per_byte import cached_bits_per_byte

    loaded = load_model(str(tiny_causal), device="cpu")
    text = TEXT * 4
    seen = []

    class Killed(Exception):
        pass

    def kill_after_two_batches(done, total, nll):
        seen.append(done)
        if len(seen) == 2:
            raise Killed

    with Store(tmp_path / "a.sqlite") as store:
        with pytest.raises(Killed):
            cached_bits_per_byte(
                loaded, text, "t", store, window=16, stride=8, on_progress=kill_after_two_batches, save_every_s=0
            )
        resumed_at = []
        result = cached_bits_per_byte(
            loaded, text, "t", store, window=16, stride=8, on_progress=lambda done, total, nll: resumed_at.append(done)
        )
        assert store.db.execute("SELECT COUNT(*) FROM model_loss_progress").fetchone()[0] == 0
    assert seen == [2, 4] and resumed_at[0] == 6  # windows 0-3 were not run again
    with Store(tmp_path / "b.sqlite") as store:
        whole = cached_bits_per_byte(loaded, text, "t", store, window=16, stride=8)
    assert result["nll_bits"] == whole["nll_bits"] and result["windows"] == whole["windows"]
