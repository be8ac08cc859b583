"""The objective registry (`distill.terms`): a new objective is one file.

`tests/fixtures/toy_objective.py` registers `gold_choice` (the gold choice's cross-entropy over
the choices' scores) and edits nothing else; a tiny causal student then learns the toy yes/no task
with that term alone (the answer term off), from `tinystudent train` and from a study. The
built-in terms keep their stored weights, so no stored key changes."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinystudent.cli import app
from tinystudent.distill import TrainConfig, train_student
from tinystudent.distill.config import ObjectiveWeights
from tinystudent.distill.objective_spec import parse_experiment_objective, parse_objective, term_names
from tinystudent.distill.terms import term_names as registered
from tinystudent.distill.terms import unregister_term
from tinystudent.tasks import load_task

TOY = Path(__file__).resolve().parents[1] / "fixtures" / "toy_objective.py"


@pytest.fixture()
def gold_choice():
    spec = importlib.util.spec_from_file_location("toy_objective", TOY)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    yield "gold_choice"
    unregister_term("gold_choice")


def toy_questions(folder: Path) -> Path:
    rows = [
        {
            "id": f"q{i}",
            "question": f"Is {i} an even number?",
            "choices": ["yes", "no"],
            "answer": "yes" if i % 2 == 0 else "no",
        }
        for i in range(48)
    ]
    path = folder / "toy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_the_built_in_terms_and_their_stored_weights_are_unchanged():
    assert registered()[:6] == ("answer", "rationale", "choice_kd", "logit_kd", "hidden", "mutual")
    # This package's other modules come after the built-in terms, unstored until given.
    assert registered()[6:] == ("onpolicy_kd", "uld_kd")
    assert ObjectiveWeights().model_dump() == {
        "answer": 1.0,
        "rationale": 0.0,
        "choice_kd": 0.0,
        "logit_kd": 0.0,
        "hidden": 0.0,
        "mutual": 1.0,
    }
    with pytest.raises(ValueError, match="unknown objective term"):
        ObjectiveWeights(gold_choice=1.0)


def test_a_registered_term_is_parsed_weighted_and_listed(gold_choice):
    assert gold_choice in term_names("one_student") and gold_choice in term_names("experiment")
    assert parse_objective(gold_choice).term == gold_choice
    assert parse_experiment_objective(gold_choice).term == gold_choice
    with pytest.raises(ValueError, match="learns from no teacher"):
        parse_objective(f"{gold_choice}:smol")
    assert ObjectiveWeights(gold_choice=2).of(gold_choice) == 2.0
    assert "gold_choice" not in ObjectiveWeights().model_dump()  # not given: no stored key changes
    help_text = " ".join(CliRunner().invoke(app, ["train", "--help"]).output.split()).replace("- ", "-")  # unwrapped
    assert "answer: cross-entropy on the gold answer" in help_text  # --objective's help is the registry's


def test_a_toy_objective_from_one_file_trains_a_student(gold_choice, tiny_causal, tmp_path):
    data = load_task(str(toy_questions(tmp_path)))
    config = TrainConfig(
        steps=12,
        batch_size=8,
        lr=3e-3,
        weights={"answer": 0.0, gold_choice: 1.0},
        eval_before=False,
        device="cpu",
    )
    result = train_student(str(tiny_causal), data.split("train"), data.split("validation"), config, tmp_path / "run")
    history = [step[gold_choice] for step in result.loss_history]
    assert len(history) == 12 and "answer" not in result.loss_history[0]
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3  # the toy term is what it learns


@pytest.mark.slow
def test_train_and_a_study_take_the_toy_objective(gold_choice, tiny_causal, tmp_path):
    task = toy_questions(tmp_path)
    cli = CliRunner().invoke(
        app,
        [
            "train",
            "--student",
            str(tiny_causal),
            "--task",
            str(task),
            "--objective",
            gold_choice,
            "--weight",
            "answer=0",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "cli"),
            "--db",
            str(tmp_path / "cli.sqlite"),
            "--json",
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout.strip().splitlines()[-1])["steps"] == 3

    from tinystudent.experiments.config import load_experiment
    from tinystudent.experiments.runner import run_experiment
    from tinystudent.store import Store

    config = tmp_path / "toy.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            name: toy_objective
            task: {{name: {task}, train_limit: 16, valid_limit: 8, test_limit: 8}}
            teachers:
              - {{name: teach, model: {tiny_causal}, max_new_tokens: 4, k_shots: 0}}
            students:
              - {{name: small, model: {tiny_causal}}}
            methods: {{finetune: [full], objectives: [{gold_choice}]}}
            training: {{steps: 2, batch_size: 4, eval_before: false}}
            eval_batch_size: 8
            """
        )
    )
    with Store(tmp_path / "study.sqlite") as store:
        study = run_experiment(load_experiment(config), store, tmp_path / "study")
    runs = [r for r in study["runs"] if r.get("objective") == gold_choice]
    assert len(runs) == 1 and 0 <= runs[0]["acc"] <= 1
