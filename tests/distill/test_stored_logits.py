"""Stored teacher logits (`distill.stored_logits`, `distill.sparse_kd`): at k = the vocabulary the
loss is the live teacher's; a second run reads the stored rows and never runs the teacher; a killed
precompute resumes without recomputing what it stored; a damaged row is a clear error; the
bytes-per-token figure is what the blobs hold."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinystudent.distill import TrainConfig, train_student
from tinystudent.distill.fused import fused_head_loss
from tinystudent.distill.losses import token_divergence
from tinystudent.distill.sparse_kd import SparseTeacher, sparse_divergence, sparse_head_loss
from tinystudent.distill.stored_logits import (
    StoredLogitsError,
    decode_logits,
    encode_logits,
    raw_bytes_per_token,
    stored_bytes_per_token,
)
from tinystudent.store import Store

FIXTURE_ARC = Path(__file__).resolve().parents[1] / "fixtures" / "arc"
CASES = [("forward_kl", 1.0), ("forward_kl", 2.0), ("reverse_kl", 2.0), ("jsd", 1.5)]


def full_top_k(teacher_logits: torch.Tensor, k: int) -> SparseTeacher:
    logprobs = F.log_softmax(teacher_logits.float(), dim=-1)
    top = logprobs.topk(k, dim=-1)
    if k < logprobs.shape[-1]:
        tail = logprobs.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    else:
        tail = torch.full(logprobs.shape[:1], float("-inf"))
    return SparseTeacher(top.indices, top.values, tail)


@pytest.mark.parametrize("divergence,temperature", CASES)
def test_at_k_vocabulary_the_sparse_divergence_and_its_gradient_are_the_live_ones(divergence, temperature):
    torch.manual_seed(0)
    student = torch.randn(7, 40, dtype=torch.float32, requires_grad=True)
    teacher = torch.randn(7, 40) * 2
    live = token_divergence(student, teacher, divergence, temperature)
    (live_grad,) = torch.autograd.grad(live.sum(), student)
    sparse = full_top_k(teacher, 40)
    stored = sparse_divergence(student, sparse.indices, sparse.logprobs, sparse.tail, divergence, temperature)
    (stored_grad,) = torch.autograd.grad(stored.sum(), student)
    torch.testing.assert_close(stored, live, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stored_grad, live_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("divergence,temperature", CASES)
def test_below_k_vocabulary_a_student_equal_to_the_teacher_has_zero_loss_and_others_more(divergence, temperature):
    torch.manual_seed(1)
    teacher = torch.randn(5, 40) * 2
    sparse = full_top_k(teacher, 6)
    args = (sparse.indices, sparse.logprobs, sparse.tail, divergence, temperature)
    same = sparse_divergence(teacher.clone().requires_grad_(True), *args)
    other = sparse_divergence(torch.randn(5, 40), *args)
    assert torch.allclose(same, torch.zeros(5), atol=1e-5)
    assert (other > 1e-3).all() and torch.isfinite(other).all()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpointed"])
@pytest.mark.parametrize("divergence,temperature", CASES[1:3])
def test_the_head_loss_from_stored_logits_at_k_vocabulary_is_the_live_teachers(fused, divergence, temperature):
    """Loss, per-row values and gradients of the output layer fused with CE + KD, chunk by chunk
    (3 rows a chunk over 10), from the teacher's hidden rows and head vs from its stored top-k."""
    torch.manual_seed(2)
    head, teacher_head = torch.nn.Linear(16, 40), torch.nn.Linear(16, 40)
    hidden = torch.randn(10, 16, requires_grad=True)
    teacher_hidden = torch.randn(10, 16)
    targets = torch.randint(0, 40, (10,))
    args = dict(ce_scale=0.3, kd_scale=0.7, divergence=divergence, temperature=temperature, chunk_tokens=3)
    live = fused_head_loss(hidden, head, targets, teacher_hidden=teacher_hidden, teacher_head=teacher_head, **args)
    live_grads = torch.autograd.grad(live[0], [hidden, head.weight, head.bias])
    with torch.no_grad():
        sparse = full_top_k(teacher_head(teacher_hidden), 40)
    stored = sparse_head_loss(hidden, targets, sparse, head=head, linear=head if fused else None, **args)
    stored_grads = torch.autograd.grad(stored[0], [hidden, head.weight, head.bias])
    for a, b in zip([*stored, *stored_grads], [*live, *live_grads]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_blob_round_trips_and_its_size_is_what_the_format_says():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 320, size=(3, 4)).astype(np.int32)
    logprobs = -rng.random((3, 4)).astype(np.float32)
    tail = np.array([-1.5, -np.inf, -3.0], dtype=np.float32)
    blob = encode_logits(ids, logprobs, tail, "float32")
    got = decode_logits(blob, 3, 4, "float32", 320)
    for a, b in zip(got, (ids, logprobs, tail)):
        np.testing.assert_array_equal(a, b)
    # float16: 4 ids x 4 bytes + 4 log-probabilities x 2 bytes + 1 float32 tail = 28 bytes a token
    assert raw_bytes_per_token(4, "float16") == 28 and raw_bytes_per_token(64) == 388
    assert len(zlib.decompress(encode_logits(ids, logprobs, tail, "float16"))) == 3 * 28
    half = decode_logits(encode_logits(ids, logprobs, tail, "float16"), 3, 4, "float16")[1]
    np.testing.assert_allclose(half, logprobs, atol=1e-3)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda blob: blob[:-5], "does not decompress"),
        (lambda blob: blob[:10] + bytes([blob[10] ^ 0xFF]) + blob[11:], "does not decompress"),
        (lambda blob: zlib.compress(zlib.decompress(blob)[:-4]), "holds 104 bytes, 108 expected"),
        (lambda blob: zlib.compress(np.full(27, 9999, dtype="<i4").tobytes()), "outside the vocabulary"),
    ],
    ids=["truncated", "flipped", "short", "bad-ids"],
)
def test_a_damaged_blob_is_a_clear_error(damage, message):
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    blob = encode_logits(ids, -np.ones((3, 4), np.float32), -np.ones(3, np.float32), "float32")
    with pytest.raises(StoredLogitsError, match=message):
        decode_logits(damage(blob), 3, 4, "float32", 320)


def test_bytes_per_token_is_the_stored_blobs_over_their_tokens(tmp_path):
    rng = np.random.default_rng(1)
    rows, size = [], 0
    for key, tokens in (("a", 5), ("b", 3)):
        blob = encode_logits(
            rng.integers(0, 320, (tokens, 8)).astype(np.int32), -rng.random((tokens, 8)), -rng.random(tokens), "float16"
        )
        rows.append((key, "teacher-x", 8, None, "float16", tokens, blob))
        size += len(blob)
    with Store(tmp_path / "db.sqlite") as store:
        assert stored_bytes_per_token(store) is None
        store.save_teacher_logits(rows)
        store.save_teacher_logits(rows[:1])  # stored once: a key keeps its row
        assert stored_bytes_per_token(store) == pytest.approx(size / 8)
        assert stored_bytes_per_token(store, "teacher-x") == pytest.approx(size / 8)
        assert stored_bytes_per_token(store, "another") is None
        assert size / 8 < raw_bytes_per_token(8, "float16") * 1.05  # random ids barely compress


# --- training with stored logits ------------------------------------------------------------------


@pytest.fixture(scope="module")
def arc():
    from tinystudent.tasks import load_task
    from tinystudent.teachers import import_tinyllm_rationales

    data = load_task(str(FIXTURE_ARC))
    rationales = import_tinyllm_rationales(FIXTURE_ARC, "train")
    train = [ex for ex in data.split("train") if all(ex.id in r for r in rationales.values())][:8]
    return {"train": train, "valid": data.split("validation")[:2], "rationales": rationales}


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> Path:
    from conftest import build_tiny

    return build_tiny("causal", tmp_path_factory.mktemp("teacher") / "teacher", seed=7)


@pytest.fixture(scope="module")
def seq2seq_teacher_path(tmp_path_factory) -> Path:
    from conftest import build_tiny

    return build_tiny("seq2seq", tmp_path_factory.mktemp("teacher") / "teacher", seed=7)


def teacher_model(path: Path):
    from tinystudent.models import load_model

    return load_model(str(path), device="cpu", dtype="float32")


def count_forwards(loaded, fail_after: int | None = None) -> dict[str, int]:
    """Count the teacher's forward passes: `any` of them, and `batches`, those of its body on more
    than one row (`ModelKind.token_rows` on a batch, not the one-row probe of its output layer);
    raise at the batch after `fail_after` (a killed precompute)."""
    calls = {"any": 0, "batches": 0}

    def count(module, args, kwargs):
        calls["any"] += 1

    def batch(module, args, kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            calls["batches"] += 1
            if fail_after is not None and calls["batches"] > fail_after:
                raise KeyboardInterrupt("killed")

    loaded.model.register_forward_pre_hook(count, with_kwargs=True)
    loaded.model.base_model.register_forward_pre_hook(count, with_kwargs=True)
    loaded.model.base_model.register_forward_pre_hook(batch, with_kwargs=True)
    return calls


def config(**changes) -> TrainConfig:
    base = dict(
        steps=2,
        batch_size=4,
        lr=3e-3,
        warmup_ratio=0.0,
        eval_before=False,
        device="cpu",
        precision="fp32",
        max_input_tokens=160,
        weights={"answer": 0.0, "logit_kd": 1.0},
        temperature=2.0,
        eval_batch_size=4,
    )
    base.update(changes)
    return TrainConfig(**base)


def train(student, arc, out: Path, teacher, db: Path, **changes):
    return train_student(
        str(student),
        arc["train"],
        arc["valid"],
        config(**changes),
        out,
        rationales=arc["rationales"],
        teacher=teacher,
        task="arc",
        teacher_logits_db=db,
    )


def rows_in(db: Path) -> int:
    with sqlite3.connect(db) as raw:
        return raw.execute("SELECT COUNT(*) FROM teacher_logits").fetchone()[0]


def losses(result) -> list[float]:
    return [h["logit_kd"] for h in result.loss_history]


FULL = dict(teacher_logits_top_k=100_000, teacher_logits_dtype="float32")
EQUALITY = [
    ("tiny_causal", "teacher_path", {}),
    ("tiny_causal", "teacher_path", {"weights": {"answer": 0.0, "logit_kd": 1.0, "rationale": 0.5}}),
    ("tiny_seq2seq", "seq2seq_teacher_path", {}),
]


@pytest.mark.parametrize("student,teacher,changes", EQUALITY, ids=["causal", "causal-rationales", "seq2seq"])
def test_training_from_stored_logits_at_k_vocabulary_follows_the_live_teacher(
    student, teacher, changes, arc, request, tmp_path
):
    """Packed causal rows (the rows reordered by length), rationale batches beside the answer's,
    and a seq2seq student (its output layer not fused) train as with the live teacher."""
    student, teacher = request.getfixturevalue(student), request.getfixturevalue(teacher)
    changes = {"max_input_tokens": 320, **changes} if "weights" in changes else changes
    db = tmp_path / "results.sqlite"
    live = train(student, arc, tmp_path / "live", str(teacher), db, **changes)
    stored = train(student, arc, tmp_path / "stored", str(teacher), db, **FULL, **changes)
    for name in ("logit_kd", "loss"):
        got, want = ([h[name] for h in r.loss_history] for r in (stored, live))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert rows_in(db) == (24 if "weights" in changes else 8)  # answers (and both teachers' rationales), once each


def test_a_second_run_reads_the_stored_logits_and_never_runs_the_teacher(tiny_causal, arc, teacher_path, tmp_path):
    db = tmp_path / "results.sqlite"
    teacher = teacher_model(teacher_path)
    calls = count_forwards(teacher)
    first = train(tiny_causal, arc, tmp_path / "first", teacher, db, **FULL)
    assert calls["batches"] == 2  # 8 answer sequences, 4 a batch, each once
    assert rows_in(db) == 8
    calls.update(any=0, batches=0)
    second = train(tiny_causal, arc, tmp_path / "second", teacher, db, **FULL)
    assert calls["any"] == 0 and rows_in(db) == 8  # read, never recomputed
    assert losses(second) == losses(first)


def test_hidden_state_matching_beside_stored_logits_still_runs_the_teacher_for_its_layers(
    tiny_causal, arc, teacher_path, tmp_path
):
    teacher = teacher_model(teacher_path)
    calls = count_forwards(teacher)
    weights = {"answer": 0.0, "logit_kd": 1.0, "hidden": 1.0}
    result = train(
        tiny_causal, arc, tmp_path / "run", teacher, tmp_path / "db.sqlite", weights=weights, teacher_logits_top_k=8
    )
    assert calls["batches"] == 2 + 2  # the precompute's two batches, then one per step for the layers
    assert all(np.isfinite([h["hidden"] for h in result.loss_history] + losses(result)))


def test_a_killed_precompute_resumes_without_recomputing_stored_rows_and_top_k_trains(
    tiny_causal, arc, teacher_path, tmp_path
):
    db = tmp_path / "results.sqlite"
    teacher = teacher_model(teacher_path)
    count_forwards(teacher, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_causal, arc, tmp_path / "killed", teacher, db, teacher_logits_top_k=8)
    assert rows_in(db) == 4  # the first batch's rows, written in its own transaction
    teacher = teacher_model(teacher_path)
    calls = count_forwards(teacher)
    result = train(tiny_causal, arc, tmp_path / "resumed", teacher, db, teacher_logits_top_k=8, steps=4)
    assert calls["batches"] == 1 and rows_in(db) == 8  # only the missing batch ran
    assert all(np.isfinite(losses(result))) and losses(result)[-1] < losses(result)[0]
    with Store(db) as store:
        per_token = stored_bytes_per_token(store)
        assert per_token is not None and 0 < per_token < raw_bytes_per_token(8, "float16")


def test_a_damaged_stored_row_stops_training_with_the_way_to_recompute_it(tiny_causal, arc, teacher_path, tmp_path):
    db = tmp_path / "results.sqlite"
    teacher = teacher_model(teacher_path)
    train(tiny_causal, arc, tmp_path / "first", teacher, db, teacher_logits_top_k=8, steps=1)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE teacher_logits SET blob = substr(blob, 1, 20)")
    with pytest.raises(StoredLogitsError, match="does not decompress.*DELETE FROM teacher_logits"):
        train(tiny_causal, arc, tmp_path / "second", teacher, db, teacher_logits_top_k=8, steps=1)


def test_stored_logits_need_logit_kd_and_a_teacher(tiny_causal, arc, tmp_path):
    with pytest.raises(ValueError, match="teacher_logits_top_k stores a teacher model's logits"):
        train(
            tiny_causal,
            arc,
            tmp_path / "run",
            None,
            tmp_path / "db.sqlite",
            weights={"answer": 1.0},
            teacher_logits_top_k=8,
        )
    assert "teacher_logits_top_k" not in TrainConfig().keyed()  # off, it changes no run's key
    assert TrainConfig(teacher_logits_top_k=8).keyed()["teacher_logits_top_k"] == 8


@pytest.mark.parametrize(
    "teachers,weights,message",
    [
        (["a", "b"], {"logit_kd": {"a": 1.0, "b": 1.0}}, "one teacher model's top-k.*mixes their whole distributions"),
        (["a"], {"logit_kd": 1.0, "onpolicy_kd": 1.0}, "cannot serve onpolicy_kd.*only the live teacher"),
        (["a"], {"onpolicy_kd": 1.0}, "cannot serve onpolicy_kd"),
        (["a"], {"logit_kd": 1.0, "uld_kd": 1.0}, "cannot serve uld_kd.*its own tokens"),
    ],
    ids=["several-teachers", "onpolicy-beside", "onpolicy-alone", "uld"],
)
def test_stored_logits_refuse_what_needs_the_live_teachers(
    tiny_causal, arc, teacher_path, tmp_path, teachers, weights, message
):
    """Several teachers' mixture, the student's own samples and a teacher's own tokens cannot come
    from one teacher's stored top-k: refused before any model loads or any row is stored."""
    db = tmp_path / "db.sqlite"
    named = {name: str(teacher_path) for name in teachers}
    with pytest.raises(ValueError, match=message):
        train(tiny_causal, arc, tmp_path / "run", named, db, weights={"answer": 1.0, **weights}, teacher_logits_top_k=8)
    assert not (tmp_path / "run").exists() and not db.exists()


def test_one_named_teacher_model_trains_from_stored_logits(tiny_causal, arc, teacher_path, tmp_path):
    """`--teacher-model t=PATH --objective logit_kd:t`: one teacher by name stores and reads its rows,
    with the same rows as the teacher given by its path (the key is its weights' identity)."""
    db = tmp_path / "results.sqlite"
    weights = {"answer": 0.0, "logit_kd": {"t": 1.0}}
    first = train(tiny_causal, arc, tmp_path / "named", {"t": str(teacher_path)}, db, weights=weights, **FULL)
    stored = rows_in(db)
    assert stored == 8
    by_path = train(tiny_causal, arc, tmp_path / "path", str(teacher_path), db, **FULL)
    assert rows_in(db) == stored
    assert losses(first) == pytest.approx(losses(by_path), rel=1e-5)


def test_train_stores_the_teacher_logits_in_the_database_given_by_db(tiny_causal, teacher_path, tmp_path):
    from typer.testing import CliRunner

    from tinystudent.cli import app

    db = tmp_path / "mine.sqlite"
    args = ["train", "--student", str(tiny_causal), "--task", str(FIXTURE_ARC), "--objective", "logit_kd"]
    args += ["--teacher-model", str(teacher_path), "--teacher-logits-top-k", "8", "--steps", "1"]
    args += ["--batch-size", "2", "--train-limit", "4", "--valid-limit", "2", "--no-test", "--device", "cpu"]
    args += ["--db", str(db), "--out", str(tmp_path / "run"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert rows_in(db) == 4
    shown = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--teacher-logits-top-k" in shown and "--teacher-logits-dtype" in shown
