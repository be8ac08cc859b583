"""Debate: round structure and the vote with a scripted generation, then once end to end."""

from __future__ import annotations

import pytest
from conftest import build_tiny

from tinystudent.collab import debate, debate_eval_result, vote
from tinystudent.models import load_model
from tinystudent.store import Store
from tinystudent.tasks import Example

QUESTIONS = [
    Example("q1", "Which gas do plants take in?", ("oxygen", "carbon dioxide", "helium"), 1),
    Example("q2", "What is the sun?", ("a star", "a planet"), 0),
]


@pytest.fixture(scope="module")
def members(tiny_causal, tmp_path_factory):
    second = build_tiny("causal", tmp_path_factory.mktemp("tiny") / "llama-seed1", seed=1)
    return [load_model(str(tiny_causal), device="cpu"), load_model(str(second), device="cpu")]


def test_vote_majority_then_earliest_member():
    assert vote([None, 1, 2, 1]) == 1
    assert vote([2, 1]) == 2  # a tie: the earliest member's option
    assert vote([None, 0, 1]) == 0  # unparsed answers do not vote
    assert vote([None, None]) is None


def test_rounds_show_each_member_the_others_answers(members):
    first, second = members
    # Round 0: the first member answers A to everything, the second B.
    # Round 1: the first member is persuaded on q1 (answers B) and keeps A on q2; the second
    # stays with B on q1 and writes no option on q2.
    script = {
        (first.name, 0): ["I think oxygen. The answer is (A)", "Stars shine. The answer is (A)"],
        (second.name, 0): ["Plants use CO2. The answer is (B)", "Planets orbit. The answer is (B)"],
        (first.name, 1): ["Agreed, CO2. The answer is (B)", "Still a star. The answer is (A)"],
        (second.name, 1): ["The answer is (B)", "I am not sure."],
    }
    calls = []

    def scripted(member, prompts):
        round_index = int("Answers from other agents" in prompts[0])
        calls.append((member.name, round_index, prompts))
        return script[(member.name, round_index)]

    result = debate(members, QUESTIONS, rounds=2, generate=scripted, pick_unparsed=False)
    assert [(name, r) for name, r, _ in calls] == [(first.name, 0), (second.name, 0), (first.name, 1), (second.name, 1)]
    round1_first = calls[2][2][0]  # what the first member reads about q1 in round 1
    assert "Agent 1: Plants use CO2. The answer is (B) [picked: (B)]" in round1_first
    assert "Your previous answer: I think oxygen. The answer is (A) [picked: (A)]" in round1_first
    assert "Agent 2" not in round1_first  # two members: one other agent
    assert "Planets orbit" in calls[2][2][1] and "Plants use CO2" not in calls[2][2][1]
    assert result.answers == [[[0, 0], [1, 1]], [[1, 0], [1, None]]]
    # Round 0 votes: q1 A vs B (tie: first member's A), q2 A vs B (A). Round 1: q1 B, B; q2 A only.
    assert result.round_votes == [[0, 0], [1, 0]]
    assert result.predictions == [1, 0] and result.correct == [True, True] and result.acc == 1.0
    assert result.round_acc([1, 0]) == [0.5, 1.0]
    assert result.cost["params"] == sum(p.numel() for m in members for p in m.model.parameters())
    assert result.settings["tie_break"] == "earliest member"


def test_a_text_naming_no_option_votes_for_the_option_its_writer_finds_most_likely(members):
    from tinystudent.evaluation.generative import render_prompt
    from tinystudent.evaluation.scoring import score_choices
    from tinystudent.models.requests import ChoiceRequest

    first, second = members
    texts = {first.name: ["The answer is (B)", "The answer is (A)"], second.name: ["hmm", "I am not sure."]}
    result = debate(members, QUESTIONS, rounds=1, generate=lambda m, prompts: texts[m.name])
    assert result.answers[0][0] == [1, 0]
    requests = [
        ChoiceRequest(
            f"{render_prompt(second.tokenizer, p)}{t}\nThe answer is",
            [f" ({'ABC'[c]}) {choice}" for c, choice in enumerate(ex.choices)],
        )
        for p, t, ex in zip(_first_prompts(), texts[second.name], QUESTIONS)
    ]
    expected = [
        max(range(len(row)), key=row.__getitem__)
        for row in score_choices(second.model, second.tokenizer, second.kind, requests)
    ]
    assert result.answers[0][1] == expected
    assert result.settings["picked_by_likelihood_per_round"] == [2]
    assert result.round_votes[0] == [vote([1, expected[0]]), vote([0, expected[1]])]


def _first_prompts() -> list[str]:
    from tinystudent.collab.debate import first_prompt

    return [first_prompt(ex) for ex in QUESTIONS]


def test_one_round_is_a_vote_over_independent_answers(members):
    answers = iter([["The answer is (C)", "The answer is (B)"], ["The answer is (A)", "(B)"]])
    result = debate(members, QUESTIONS, rounds=1, generate=lambda m, prompts: next(answers))
    assert result.round_votes == [[2, 1]] and result.predictions == [2, 1]
    with pytest.raises(ValueError, match="at least two members"):
        debate(members[:1], QUESTIONS)
    with pytest.raises(ValueError, match="rounds"):
        debate(members, QUESTIONS, rounds=0)


def test_debate_end_to_end_on_tiny_models(members):
    result = debate(members, QUESTIONS, rounds=2, max_new_tokens=6, batch_size=2)
    assert len(result.texts) == 2 and all(len(r) == 2 and len(r[0]) == 2 for r in result.texts)
    assert all(isinstance(t, str) for r in result.texts for m in r for t in m)
    assert len(result.predictions) == len(QUESTIONS)
    assert result.cost["members"] == 2 and result.cost["latency_ms_p50"] > 0
    assert "whole debate" in result.cost["peak_memory_scope"]
    evaluation = debate_eval_result(result, QUESTIONS, "handmade", "test")
    assert evaluation.mode == "debate" and evaluation.n == 2
    assert evaluation.acc == result.acc and evaluation.settings["round_acc"] == result.round_acc([1, 0])
    with Store() as store:
        assert store.evaluation(store.save_evaluation(evaluation))["model"].startswith("debate-2r(")
