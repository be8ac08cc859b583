"""Recovery of a layer-cut student from its parent, and choice-level KD from a causal teacher
into an encoder student: both on real BioASQ text and the real SmolLM2."""

from __future__ import annotations

import pytest

from tinystudent.distill import RecoveryConfig, TrainConfig, train_student
from tinystudent.distill.recover import heldout_text, recover, recovery_texts, token_chunks
from tinystudent.models.students import scale_down
from tinystudent.store import Store
from tinystudent.tasks import load_task
from tinystudent.teachers import LocalTeacher, read_bundled, teacher_choice_logprobs

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def bioasq():
    return load_task("bioasq")


@pytest.fixture(scope="module")
def cut_smollm2(tmp_path_factory):
    """SmolLM2 cut to its first and last layer: 2 of 30."""
    return scale_down(SMOLLM2, "0,29", tmp_path_factory.mktemp("cut") / "smollm2-2L")


def test_recovery_text_is_training_evidence_and_rationales(bioasq):
    train = bioasq.split("train")[:5]
    rationales = {}
    for r in read_bundled("train"):
        rationales.setdefault(r.teacher, {})[r.example_id] = r.text
    texts = recovery_texts(
        train, {t: {i: x for i, x in by.items() if i in {e.id for e in train}} for t, by in rationales.items()}
    )
    assert texts[0].startswith(train[0].context[:50]) and train[0].question in texts[0]
    assert len(texts) > 5  # the questions, then the teachers' rationales of those questions
    test_ids = {ex.id for ex in bioasq.split("test")}
    assert not any(ex.id in test_ids for ex in train)


@pytest.mark.slow
def test_recovery_lowers_bits_per_byte_and_resumes(bioasq, cut_smollm2, smollm2, tmp_path):
    texts = recovery_texts(bioasq.split("train")[:40])
    heldout = heldout_text(bioasq.split("validation"), 1500)
    config = RecoveryConfig(steps=10, batch_size=4, seq_len=32, lr=1e-3, checkpoint_every=4)

    class Stop(Exception):
        pass

    def stop_at_six(record):
        if record["step"] == 6:
            raise Stop

    with pytest.raises(Stop):  # killed after step 6: the checkpoint of step 4 survives
        recover(str(cut_smollm2), smollm2, texts, heldout, config, tmp_path / "rec", device="cpu", on_step=stop_at_six)
    result = recover(str(cut_smollm2), smollm2, texts, heldout, config, tmp_path / "rec", device="cpu")
    assert [h["step"] for h in result.loss_history] == list(range(1, 11))  # resumed at step 5
    assert result.bits_per_byte_after < result.bits_per_byte_before - 0.5, result.summary()
    assert result.loss_history[-1]["kd"] < result.loss_history[0]["kd"]
    again = recover(str(cut_smollm2), smollm2, texts, heldout, config, tmp_path / "rec", device="cpu")
    assert again.bits_per_byte_after == result.bits_per_byte_after  # read back, not recomputed
    assert (tmp_path / "rec" / "model" / "student.json").exists()


def test_token_chunks_cover_the_text_in_order(smollm2):
    chunks = token_chunks(["one two three", "four five"], smollm2.tokenizer, 3)
    flat = [t for chunk in chunks for t in chunk]
    expected = smollm2.tokenizer("one two three")["input_ids"] + [smollm2.tokenizer.eos_token_id]
    assert (
        all(len(c) == 3 for c in chunks)
        and flat == (expected + smollm2.tokenizer("four five")["input_ids"])[: len(flat)]
    )


def test_recovery_refuses_a_student_without_a_cut_or_of_another_kind():
    from tinystudent.experiments.config import StudentSpec

    with pytest.raises(ValueError, match="recover needs keep_layers"):
        StudentSpec(name="s", model=SMOLLM2, recover=RecoveryConfig())
    with pytest.raises(ValueError, match="kd_weight or ce_weight"):
        RecoveryConfig(kd_weight=0, ce_weight=0)


@pytest.mark.slow
def test_choice_kd_from_a_causal_teacher_trains_an_encoder(bioasq, smollm2, tmp_path):
    """SmolLM2's probabilities over yes/no on real BioASQ questions teach the real MiniLM."""
    train, valid = bioasq.split("train")[:8], bioasq.split("validation")[:8]
    with Store(tmp_path / "cache.sqlite") as store:
        scores = teacher_choice_logprobs(LocalTeacher(smollm2), train, "bioasq", store, max_input_tokens=128)
    assert set(scores) == {ex.id for ex in train} and all(len(s) == 2 for s in scores.values())
    # Every step sees the same 8 questions, so the fall is the gradient's, not the batches'.
    config = TrainConfig(
        steps=24,
        batch_size=8,
        lr=2e-4,
        warmup_ratio=0.0,
        eval_before=False,
        device="cpu",
        max_input_tokens=96,
        weights={"answer": 0.0, "choice_kd": 1.0},
        temperature=1.0,
        attention_dropout=0.0,
    )
    result = train_student(
        "sentence-transformers/all-MiniLM-L6-v2",
        train,
        valid,
        config,
        tmp_path / "run",
        choice_logprobs={"smollm2": scores},
        task="bioasq",
    )
    kd = [h["choice_kd:smollm2"] for h in result.loss_history]
    assert sum(kd[-3:]) / 3 < 0.5 * sum(kd[:3]) / 3, kd
