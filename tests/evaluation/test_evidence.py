"""Evidence selection: the sentences most related to the question are kept, in their order, and the
question always; for every model kind, in scoring, training and teaching."""

from __future__ import annotations

import pytest

from tinystudent.distill.data import build_features, fit_answer_prompt
from tinystudent.evaluation import evaluate_model
from tinystudent.evaluation.evidence import rank_sentences, split_sentences
from tinystudent.evaluation.fit import EVIDENCE, SELECT, fit_example, token_counter
from tinystudent.evaluation.prompts import choice_context
from tinystudent.models import load_model
from tinystudent.store import Store
from tinystudent.tasks import Example
from tinystudent.teachers import LocalTeacher, teach

ANSWER = "Aspirin irreversibly inhibits cyclooxygenase-1 in platelets by acetylating a serine."
FILLER = [
    "The liver stores glycogen and releases glucose between meals.",
    "Red blood cells carry oxygen from the lungs to the tissues.",
    "The kidneys filter about 180 litres of plasma every day.",
    "Insulin is secreted by the beta cells of the pancreas.",
    "Neurons communicate through chemical synapses and gap junctions.",
    "Bone marrow produces the cells of the blood throughout life.",
]
ITEM = Example(
    "aspirin",
    "Does aspirin inhibit cyclooxygenase-1 in platelets?",
    ("yes", "no"),
    0,
    " ".join(FILLER * 3 + [ANSWER]),  # the answer comes last, after 18 sentences of other things
)
BUDGET = 160


def test_sentences_are_split_in_order_and_repeats_count_once():
    text = "First point. Second point!\nThird point? Second  point! (Fourth) point. 5 more.\n\nlast one"
    assert split_sentences(text) == [
        "First point.",
        "Second point!",
        "Third point?",
        "(Fourth) point.",
        "5 more.",
        "last one",
    ]


def test_bm25_puts_the_sentence_that_answers_first():
    sentences = split_sentences(ITEM.context)
    assert len(sentences) == len(FILLER) + 1  # the filler repeats count once
    assert sentences[rank_sentences(ITEM.question, sentences)[0]] == ANSWER
    assert rank_sentences("zebra quagga", sentences) == list(range(len(sentences)))  # no shared word: order kept


def test_selection_keeps_the_answer_sentence_where_cutting_the_end_loses_it(tiny_causal):
    tokenizer = load_model(str(tiny_causal), device="cpu").tokenizer
    count = token_counter(tokenizer)
    render = lambda ex: choice_context(ex, "context")  # noqa: E731
    cut = fit_example(ITEM, render, count, tokenizer, BUDGET)
    selected = fit_example(ITEM, render, count, tokenizer, BUDGET, SELECT)
    for fitted in (cut, selected):
        assert fitted.cut == EVIDENCE and fitted.example.question == ITEM.question and fitted.tokens <= BUDGET
    assert ANSWER not in cut.example.context and ANSWER in selected.example.context
    kept = split_sentences(selected.example.context)
    assert kept == [s for s in split_sentences(ITEM.context) if s in kept]  # whole sentences, in their order
    assert fit_example(ITEM, render, count, tokenizer, 10_000, SELECT).example == ITEM  # fits whole: untouched


def test_a_best_sentence_too_long_to_fit_whole_keeps_its_start(tiny_causal):
    tokenizer = load_model(str(tiny_causal), device="cpu").tokenizer
    count = token_counter(tokenizer)
    render = lambda ex: choice_context(ex, "context")  # noqa: E731
    long_answer = "Aspirin inhibits cyclooxygenase-1 in platelets, " + "and so on, " * 60 + "always."
    item = Example("long", ITEM.question, ("yes", "no"), 0, " ".join(FILLER + [long_answer]))
    budget = count(render(Example("x", ITEM.question, ("yes", "no"), 0, "x"))) + 30
    fitted = fit_example(item, render, count, tokenizer, budget, SELECT)
    assert fitted.cut == EVIDENCE and fitted.tokens <= budget and fitted.example.question == ITEM.question
    assert len(fitted.example.context) > 20 and long_answer.startswith(fitted.example.context)


@pytest.fixture(scope="module")
def tiny_classifier(tiny_encoder, tmp_path_factory):
    from tinystudent.models.students import scale_down

    return scale_down(
        str(tiny_encoder), None, tmp_path_factory.mktemp("cls") / "bert", kind="classifier", labels=["yes", "no"]
    )


@pytest.mark.parametrize("kind", ["causal", "seq2seq", "encoder", "classifier"])
def test_every_kind_reads_the_selected_sentence_in_scoring_and_training(kind, request):
    loaded = load_model(str(request.getfixturevalue(f"tiny_{kind}")), device="cpu")
    assert loaded.kind == kind
    fitted = fit_answer_prompt(ITEM, loaded.tokenizer, kind, "context", BUDGET, SELECT)
    assert fitted.cut == EVIDENCE and ANSWER in fitted.example.context and fitted.example.question == ITEM.question
    features, summary = build_features(
        [ITEM],
        loaded.tokenizer,
        kind=kind,
        style="context",
        rationales={},
        choice_logprobs={},
        rationale_prompt="{question}",
        max_input=BUDGET,
        max_answer=8,
        max_rationale=8,
        evidence=SELECT,
    )
    assert summary["evidence"] == SELECT and summary["evidence_cut"] == 1
    assert ANSWER in features[ITEM.id].context and features[ITEM.id].context.endswith(
        f"Question: {ITEM.question}\nAnswer:"
    )
    result = evaluate_model(loaded, [ITEM], "bioasq", "test", max_input_tokens=BUDGET, evidence=SELECT)
    assert result.settings["fit"]["evidence"] == SELECT and result.settings["fit"]["budget_tokens"] == BUDGET
    assert result.summary()["evidence"] == SELECT and result.truncated == 1


def test_a_teacher_prompt_keeps_the_selected_sentence(tiny_causal, tmp_path):
    teacher = LocalTeacher(load_model(str(tiny_causal), device="cpu"))
    with Store(tmp_path / "cache.sqlite") as store:
        teach(teacher, [ITEM], "bioasq", "cot", store, max_new_tokens=4, max_input_tokens=BUDGET + 160, evidence=SELECT)
        prompt = store.db.execute("SELECT prompt FROM teacher_outputs").fetchone()[0]
    assert ANSWER in prompt and ITEM.question in prompt and FILLER[0] in prompt
