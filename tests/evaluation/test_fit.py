"""Long inputs never lose the question: every model kind, in scoring, training and teaching, cuts
the evidence of a real long BioASQ item and keeps its question and choices."""

from __future__ import annotations

import pytest

from tinystudent.distill.data import build_features, fit_answer_prompt
from tinystudent.evaluation import evaluate_model
from tinystudent.evaluation.fit import EVIDENCE, QUESTION, InputTooLong, fit_example, token_counter
from tinystudent.evaluation.prompts import choice_context, lettered_question
from tinystudent.models import load_model
from tinystudent.store import Store
from tinystudent.tasks import Example, load_task
from tinystudent.teachers import LocalTeacher, teach

BUDGET = 200


@pytest.fixture(scope="module")
def longest():
    """The longest training item of the shipped BioASQ split (about 26k characters of evidence)."""
    train = load_task("bioasq").split("train")
    return max(train, key=lambda ex: len(ex.context or ""))


def test_the_longest_bioasq_item_is_long(longest):
    assert len(longest.context) > 20_000 and longest.question.endswith("?")


@pytest.mark.parametrize("kind", ["causal", "seq2seq", "encoder"])
def test_scoring_fits_a_long_item_by_cutting_evidence(kind, longest, request):
    loaded = load_model(str(request.getfixturevalue(f"tiny_{kind}")), device="cpu")
    fitted = fit_answer_prompt(longest, loaded.tokenizer, kind, "context", BUDGET)
    assert fitted.cut == EVIDENCE and fitted.example.question == longest.question
    assert longest.context.startswith(fitted.example.context)  # the end of the evidence went
    prompt = choice_context(fitted.example, "context")
    assert prompt.endswith(f"Question: {longest.question}\nAnswer:")
    count = token_counter(loaded.tokenizer, kind == "seq2seq")
    if kind == "encoder":  # the pair the cross-encoder sees keeps the question and every choice
        for choice in longest.choices:
            ids = loaded.tokenizer(prompt, choice)["input_ids"]
            assert len(ids) <= BUDGET
            assert longest.question in loaded.tokenizer.decode(ids) and choice in loaded.tokenizer.decode(ids)
    else:
        assert count(prompt) <= BUDGET
    result = evaluate_model(loaded, [longest], "bioasq", "train", max_input_tokens=BUDGET)
    assert result.truncated == 1
    assert result.settings["fit"]["evidence_cut"] == 1 and result.settings["fit"]["budget_tokens"] == BUDGET
    assert result.summary()["truncated"] == 1


@pytest.mark.parametrize("kind", ["causal", "seq2seq", "encoder"])
def test_training_inputs_keep_the_question(kind, longest, request):
    loaded = load_model(str(request.getfixturevalue(f"tiny_{kind}")), device="cpu")
    rationales = {"t": {longest.id: "Because the evidence says so."}}
    features, fit = build_features(
        [longest],
        loaded.tokenizer,
        kind=kind,
        style="context",
        rationales=rationales,
        choice_logprobs={},
        rationale_prompt="Rationale ({teacher}):\n{question}\nExplanation:",
        max_input=BUDGET,
        max_answer=8,
        max_rationale=16,
    )
    assert fit["evidence_cut"] == 1
    feats = features[longest.id]
    if kind == "encoder":
        assert feats.context.endswith(f"Question: {longest.question}\nAnswer:")
        return
    prompt = loaded.tokenizer.decode(feats.prompt, skip_special_tokens=True)
    assert f"Question: {longest.question}" in prompt and len(feats.prompt) <= BUDGET
    rationale_prompt = loaded.tokenizer.decode(feats.rationales["t"][0], skip_special_tokens=True)
    assert longest.question in rationale_prompt and "A. yes" in rationale_prompt
    assert len(feats.rationales["t"][0]) <= BUDGET


def test_teacher_prompt_with_shots_keeps_every_question(tiny_causal, longest, tmp_path):
    train = load_task("bioasq").split("train")
    others = sorted(train, key=lambda ex: -len(ex.context or ""))[1:4]
    teacher = LocalTeacher(load_model(str(tiny_causal), device="cpu"))
    with Store(tmp_path / "cache.sqlite") as store:
        summary = teach(
            teacher,
            [longest],
            "bioasq",
            "teacher_forcing_cot",
            store,
            train_examples=others,
            k_shots=2,
            max_new_tokens=8,
            max_input_tokens=400,
        )
        prompt = store.db.execute("SELECT prompt FROM teacher_outputs").fetchone()[0]
    assert summary.truncated == 1 and summary.failed == 0
    assert teacher.count_tokens(prompt) <= 400
    assert f"Q: {longest.question}" in prompt
    assert sum(f"Q: {ex.question}" in prompt for ex in others) == 2  # both shots' questions survive


def test_shots_are_dropped_before_the_question_is_cut(tiny_causal, longest):
    from dataclasses import replace

    from transformers import AutoTokenizer

    from tinystudent.evaluation.fit import fit_with_shots

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    train = load_task("bioasq").split("train")
    shots = [ex for ex in train if ex.id != longest.id][:3]
    render_shot = lambda e: f"Q: {e.context or ''} {e.question} A: {e.choices[e.answer]}"  # noqa: E731
    render = lambda e, s: "\n".join([*map(render_shot, s), f"Q: {e.context or ''} {e.question} A:"])  # noqa: E731
    count = token_counter(tokenizer)
    bare = lambda e: replace(e, context=None)  # noqa: E731
    alone, one_shot = count(render(bare(longest), [])), count(render(bare(longest), [bare(shots[0])]))
    budget = (alone + one_shot) // 2  # the bare question fits, not with even one bare shot
    fitted, kept = fit_with_shots(longest, shots, render, render_shot, count, tokenizer, budget)
    assert kept == [] and fitted.example.question == longest.question and fitted.cut == EVIDENCE
    assert count(render(fitted.example, kept)) <= budget


def test_real_tokenizers_keep_the_question(longest, smollm2):
    from transformers import AutoTokenizer

    from tinystudent.models.loading import resolve_model

    minilm = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2").path)
    for tokenizer, kind in ((smollm2.tokenizer, "causal"), (minilm, "encoder")):
        fitted = fit_answer_prompt(longest, tokenizer, kind, "context", 256)
        assert fitted.cut == EVIDENCE and fitted.example.question == longest.question
        prompt = choice_context(fitted.example, "context")
        assert tokenizer(prompt, add_special_tokens=False)["input_ids"].__len__() <= 256


def test_question_is_cut_from_its_start_only_without_evidence(tiny_causal):
    tokenizer = load_model(str(tiny_causal), device="cpu").tokenizer
    render = lambda ex: choice_context(ex, "arc")  # noqa: E731
    count = token_counter(tokenizer)
    long_question = Example("q", "blah " * 5000 + "which gas do plants take in?", ("oxygen", "carbon dioxide"), 1)
    fitted = fit_example(long_question, render, count, tokenizer, 64)
    assert fitted.cut == QUESTION and fitted.example.question.endswith("which gas do plants take in?")
    assert count(render(fitted.example)) <= 64
    huge_choices = Example("c", "Which?", ("x" * 3000, "y"), 0)
    with pytest.raises(InputTooLong, match="its choices alone do not fit"):
        fit_example(huge_choices, lettered_question, count, tokenizer, 64)
