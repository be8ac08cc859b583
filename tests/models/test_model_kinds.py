"""Model kinds: one adapter per kind, capabilities instead of kind names, one generation path."""

from __future__ import annotations

import pytest
import torch

from tinystudent.evaluation.generative import generate_in_batches, generate_texts
from tinystudent.evaluation.scoring import score_choices, score_choices_encoder
from tinystudent.models import ModelKind, kind_adapter, load_model, register_kind
from tinystudent.models.generation import RowParams
from tinystudent.models.kinds import KIND_NAMES, known_kinds
from tinystudent.models.kinds.causal import CausalKind
from tinystudent.models.requests import ChoiceRequest
from tinystudent.teachers.base import GenerationSettings
from tinystudent.teachers.local import LocalTeacher

REQUESTS = [
    ChoiceRequest("Question: Which gas do plants take in?\nAnswer:", [" oxygen", " carbon dioxide"]),
    ChoiceRequest("The sun is a", [" star", " planet", " moon"]),
]


@pytest.fixture(scope="module")
def causal(tiny_causal):
    return load_model(str(tiny_causal), device="cpu")


@pytest.fixture(scope="module")
def seq2seq(tiny_seq2seq):
    return load_model(str(tiny_seq2seq), device="cpu")


@pytest.mark.parametrize(
    "name,generates,next_token,decoder_only",
    [("causal", True, True, True), ("seq2seq", True, True, False), ("encoder", False, False, False)],
)
def test_each_kind_states_what_it_can_do(name, generates, next_token, decoder_only):
    adapter = kind_adapter(name)
    assert isinstance(adapter, ModelKind) and adapter.name == name
    assert (adapter.generates, adapter.next_token, adapter.decoder_only) == (generates, next_token, decoder_only)
    assert kind_adapter(adapter) is adapter


def test_an_unknown_kind_and_an_unsupported_operation_fail_clearly():
    with pytest.raises(ValueError, match="must be one of.*causal"):
        kind_adapter("decoder")
    encoder = kind_adapter("encoder")
    with pytest.raises(ValueError, match="encoder model cannot generate text"):
        encoder.generation_inputs([[1, 2]], 0)
    with pytest.raises(ValueError, match="encoder model cannot train on token targets"):
        encoder.token_batch([([1], [2])], 0)


def test_a_loaded_model_carries_its_kind_and_its_adapter(causal, seq2seq):
    assert causal.kind == "causal" and causal.adapter is kind_adapter("causal")
    assert seq2seq.adapter.name == seq2seq.kind == "seq2seq"
    assert causal.input_limit == causal.adapter.input_limit(causal.model, causal.tokenizer) == 512


def test_generation_inputs_pad_each_kind_its_own_way():
    rows = [[5, 6, 7], [8]]
    ids, mask, start = kind_adapter("causal").generation_inputs(rows, 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]] and start == 3
    ids, mask, start = kind_adapter("seq2seq").generation_inputs(rows, 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]] and start == 1


def test_teachers_and_evaluation_generate_through_one_path(causal, seq2seq):
    """The same prompt gives the same greedy text to a teacher and to evaluation."""
    prompts = ["Question: Which gas do plants take in?", "The sun is"]
    for loaded in (causal, seq2seq):
        evaluated = generate_texts(loaded.model, loaded.tokenizer, loaded.kind, prompts, max_new_tokens=6, batch_size=2)
        teacher = LocalTeacher(loaded, batch_size=1, chat=False)
        taught = dict(teacher.generate(prompts, GenerationSettings(max_new_tokens=6), [0, 0]))
        assert [taught[i].text for i in range(2)] == evaluated
        assert teacher.calls == 2


def test_every_row_keeps_its_own_limit_in_a_batch(causal):
    ids = [causal.adapter.encode_prompt(causal.tokenizer, p) for p in ("yes no maybe", "The sun is a star.")]
    rows = [RowParams(3), RowParams(7)]
    batches = []
    results = dict(
        generate_in_batches(
            causal.model, causal.tokenizer, causal.adapter, ids, rows, 4, lambda n, s: batches.append(n)
        )
    )
    for result, row in zip((results[0], results[1]), rows):
        assert result.completion_tokens == row.max_new_tokens or result.finish_reason == "stop"
    assert sum(batches) == 2 and all(n >= 1 for n in batches)  # called as results are done
    with pytest.raises(ValueError, match="encoder model cannot generate"):
        next(generate_in_batches(causal.model, causal.tokenizer, "encoder", ids, rows))


def test_cross_encoders_score_through_the_common_driver(tiny_encoder):
    loaded = load_model(str(tiny_encoder), device="cpu")
    common = score_choices(loaded.model, loaded.tokenizer, loaded.adapter, REQUESTS, batch_size=1, max_length=64)
    assert common == score_choices_encoder(loaded.model, loaded.tokenizer, REQUESTS, batch_size=2, max_length=64)
    assert [len(row) for row in common] == [2, 3]
    assert all(sum(torch.tensor(row).exp().tolist()) == pytest.approx(1.0) for row in common)


def test_an_encoders_reserve_is_what_its_choice_takes_in_a_pair(tiny_encoder):
    tokenizer = load_model(str(tiny_encoder), device="cpu").tokenizer
    adapter = kind_adapter("encoder")
    context = "The sun is a"
    alone = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    for choice in (" star", " carbon dioxide"):
        (pair,) = adapter.encode_choices(tokenizer, ChoiceRequest(context, [choice]), 64)
        assert adapter.choice_reserve(tokenizer, [choice]) == len(pair["input_ids"]) - alone


def test_a_new_kind_is_one_class_and_a_registration(causal, monkeypatch):
    """A kind registered from outside the package works wherever a kind is asked for."""
    from tinystudent.models import kinds

    monkeypatch.setattr(kinds, "_ADAPTERS", dict(kinds._ADAPTERS))  # forgotten after the test

    class ShyCausal(CausalKind):
        name = "shy-causal"
        generates = False

    adapter = register_kind(ShyCausal())
    assert "shy-causal" in known_kinds() and kind_adapter("shy-causal") is adapter
    assert known_kinds()[: len(KIND_NAMES)] == KIND_NAMES
    expected = score_choices(causal.model, causal.tokenizer, "causal", REQUESTS)
    assert score_choices(causal.model, causal.tokenizer, "shy-causal", REQUESTS) == expected
    with pytest.raises(ValueError, match="shy-causal model cannot generate"):
        generate_texts(causal.model, causal.tokenizer, "shy-causal", ["The sun"], max_new_tokens=2)


def test_token_distillation_pairs_kinds_by_what_they_compute(causal, seq2seq, monkeypatch):
    """A teacher and student whose token rows are computed alike pair up (a registered causal-like
    kind with a causal teacher); a seq2seq teacher for a causal student is refused, naming both."""
    from dataclasses import replace

    from tinystudent.distill import TrainConfig
    from tinystudent.distill.trainee import load_teacher
    from tinystudent.models import kinds

    monkeypatch.setattr(kinds, "_ADAPTERS", dict(kinds._ADAPTERS))

    class PrefixCausal(CausalKind):
        name = "prefix-causal"

    register_kind(PrefixCausal())
    student = replace(causal, kind="prefix-causal")
    config = TrainConfig(weights={"answer": 1.0, "logit_kd": 1.0})
    teacher, _, _ = load_teacher(causal, student, config, torch.device("cpu"), None)
    assert teacher.loaded.model is causal.model and student.adapter.name == "prefix-causal"
    causal.model.requires_grad_(True)  # load_teacher froze the module's shared model
    with pytest.raises(ValueError, match=r"teacher .* is seq2seq, student .* is prefix-causal"):
        load_teacher(seq2seq, student, config, torch.device("cpu"), None)
