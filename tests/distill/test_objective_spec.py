"""Objective strings: one parser for the experiment config and `tinystudent train`."""

from __future__ import annotations

import pytest

from tinystudent.distill.objective_spec import ObjectiveSpec, parse_experiment_objective, parse_objective


@pytest.mark.parametrize(
    "text,term,teacher",
    [
        ("answer", "answer", None),
        ("rationale", "rationale", None),
        ("rationale:flan-t5-xl", "rationale", "flan-t5-xl"),
        ("rationale:all", "rationale", "all"),
        ("choice_kd:smollm2", "choice_kd", "smollm2"),
        ("choice_kd:all", "choice_kd", "all"),
        ("logit_kd:qwen2.5-7b", "logit_kd", "qwen2.5-7b"),
        ("hidden", "hidden", None),
        ("mutual", "mutual", None),
        (" answer ", "answer", None),
    ],
)
def test_every_form_parses(text, term, teacher):
    objective = parse_objective(text)
    assert objective == ObjectiveSpec(term, teacher)
    assert str(objective) == text.strip()
    assert objective.every_teacher == (teacher == "all")


@pytest.mark.parametrize(
    "text,message",
    [
        ("magic", "unknown objective 'magic': the terms are answer, rationale"),
        ("rationale:", "objective 'rationale:': name the teacher after ':'"),
        ("answer:smol", "objective 'answer:smol': answer learns from no teacher"),
        ("hidden:smol", "hidden learns from no teacher"),
    ],
)
def test_a_bad_objective_is_an_error_naming_it(text, message):
    with pytest.raises(ValueError, match=message):
        parse_objective(text)


def test_weight_names_put_the_teacher_after_a_dot():
    assert parse_objective("rationale.qwen2.5-7b", separator=".") == ObjectiveSpec("rationale", "qwen2.5-7b")
    with pytest.raises(ValueError, match="unknown objective 'mutual'"):
        parse_objective("mutual", terms=("answer", "rationale"))


@pytest.mark.parametrize(
    "text,message",
    [
        ("rationale", "needs a teacher: rationale:<teacher name>"),
        ("choice_kd", "needs a teacher: choice_kd:<teacher name>"),
        ("hidden", "unknown objective 'hidden': use answer, rationale:<teacher>"),
        ("logit_kd", "needs a teacher: logit_kd:<teacher name>"),
        ("answer:smol", "answer learns from no teacher"),
    ],
)
def test_experiment_objectives_name_their_teacher(text, message):
    with pytest.raises(ValueError, match=message):
        parse_experiment_objective(text)
    assert parse_experiment_objective("rationale:all").every_teacher


def test_train_command_weights_use_the_same_parser():
    from tinystudent.commands.train import objective_weights

    weights = objective_weights("answer,rationale", ["rationale.qwen2.5-7b=2", "answer=0.5"], ["qwen2.5-7b", "flan"])
    assert weights == {"answer": 0.5, "rationale": {"qwen2.5-7b": 2.0, "flan": 1.0}}
    with pytest.raises(ValueError, match=r"--objective: unknown \['rationale:flan'\]"):
        objective_weights("rationale:flan", [])
    with pytest.raises(ValueError, match="--weight 'answer.flan=2': objective 'answer.flan': answer learns from no"):
        objective_weights("answer", ["answer.flan=2"])
    with pytest.raises(ValueError, match="--weight 'magic=1': unknown objective 'magic'"):
        objective_weights("answer", ["magic=1"])
