"""Token-level objectives in a study: `logit_kd:<teacher>`, `onpolicy_kd:<teacher>`, `uld_kd:<teacher>`
(and `A+B`) are methods like the others, learnt from a local teacher model of the study."""

from __future__ import annotations

import textwrap

import pytest
from test_experiments import write_toy_task
from test_plan import STUDY, toy_data
from typer.testing import CliRunner

from tinystudent.cli import app
from tinystudent.experiments.config import Experiment, load_experiment
from tinystudent.experiments.plan import plan

TEACHERS = [
    {"name": "local", "model": "tiny-causal"},
    {"name": "other", "model": "tiny-causal-b"},
    {"name": "server", "backend": "http", "model": "big", "base_url": "http://localhost:1/v1", "strategy": "zero_shot"},
    {"name": "paper", "backend": "imported", "reported_acc": 0.7, "reported_source": "Table 2"},
]


def token_study(objectives: list[str], teachers: list[dict] | None = None, students=None) -> Experiment:
    return Experiment.model_validate(
        {
            **STUDY,
            "teachers": teachers or TEACHERS,
            "students": students or [{"name": "whole", "model": "tiny-causal"}],
            "methods": {"finetune": ["full"], "objectives": objectives},
            "seeds": [0],
            "collaboration": None,
        }
    )


def train_units(experiment: Experiment) -> dict:
    return {u.payload["objective"]: u for u in plan(experiment, toy_data()) if u.kind == "train"}


@pytest.mark.parametrize(
    "objective,message",
    [
        ("logit_kd:paper", "teacher 'paper' is imported .*only a local model gives"),
        ("onpolicy_kd:server", "teacher 'server' is http .*a server answers with text, not logits"),
        ("uld_kd:nobody", "names no teacher 'nobody'"),
        ("logit_kd:local+local", "name each teacher model once"),
        ("logit_kd:local+paper", "teacher 'paper' is imported"),
    ],
)
def test_a_token_level_objective_needs_local_teacher_models(objective, message):
    with pytest.raises(ValueError, match=message):
        token_study(["answer", objective])


def test_the_plan_trains_each_token_level_objective_from_its_teacher_models():
    units = train_units(token_study(["answer", "logit_kd:local", "onpolicy_kd:local+other", "uld_kd:all"]))
    student = next(u for u in plan(token_study(["answer"]), toy_data()) if u.kind == "student")
    assert set(units) == {"answer", "logit_kd:local", "onpolicy_kd:local+other", "uld_kd:all"}
    for unit in units.values():  # the teacher model is loaded by the run: nothing else runs first
        assert unit.needs == (student.key,)
    assert units["answer"].payload["teachers"] == {}
    assert {n: t["model"] for n, t in units["onpolicy_kd:local+other"].payload["teachers"].items()} == {
        "local": "tiny-causal",
        "other": "tiny-causal-b",
    }
    assert set(units["uld_kd:all"].payload["teachers"]) == {"local", "other"}  # not the server nor the paper
    assert units["logit_kd:local"].name == "whole / full / logit_kd:local / seed 0"


def test_an_encoder_student_is_skipped_for_token_level_objectives_with_a_note():
    from test_plan import simulate

    from tinystudent.experiments.plan import make_plan

    experiment = token_study(["answer", "logit_kd:local"], students=[{"name": "enc", "model": "tiny-enc"}])
    units, known = simulate(experiment, toy_data())
    assert [u.payload["objective"] for u in units if u.kind == "train"] == ["answer"]
    notes = make_plan(experiment, toy_data(), known).notes
    assert notes == [
        "skipping enc / logit_kd:local: an encoder student has no next-token distribution to match a teacher model's"
    ]


def test_the_unit_key_changes_with_the_teacher_model_alone():
    def key(**teacher) -> str:
        teachers = [{**TEACHERS[0], **teacher}, *TEACHERS[1:]]
        return train_units(token_study(["answer", "logit_kd:local"], teachers))["logit_kd:local"].key

    def answer_key(**teacher) -> str:
        teachers = [{**TEACHERS[0], **teacher}, *TEACHERS[1:]]
        return train_units(token_study(["answer", "logit_kd:local"], teachers))["answer"].key

    assert key(model="tiny-causal-2") != key()
    assert key(max_input_tokens=32) != key()  # what the teacher reads
    assert key(strategy="cot", k_shots=0) == key()  # how it writes rationales: not its logits
    assert answer_key(model="tiny-causal-2") == answer_key()


def test_run_check_refuses_logit_kd_from_an_imported_teacher(tmp_path):
    config = tmp_path / "imported.yaml"
    config.write_text(
        textwrap.dedent(
            """
            name: imported
            task: {name: toy.jsonl}
            teachers: [{name: paper, backend: imported, reported_acc: 0.6, reported_source: a paper}]
            students: [{name: s, model: tiny}]
            methods: {objectives: [answer, "logit_kd:paper"]}
            """
        )
    )
    (tmp_path / "toy.jsonl").write_text('{"id": "q0", "question": "?", "choices": ["yes", "no"], "answer": "yes"}\n')
    result = CliRunner().invoke(app, ["run", str(config), "--check", "--db", str(tmp_path / "r.sqlite")])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "methods.objectives: 'logit_kd:paper': teacher 'paper' is imported" in said
    assert "backend: local" in said and "rationale:paper or choice_kd:paper" in said


def test_run_check_compares_the_tokenizers_of_same_vocabulary_objectives(tmp_path, tiny_causal):
    from conftest import byte_level_tokenizer

    from tinystudent.experiments.vocabularies import check_vocabularies

    other = tmp_path / "other-tokenizer"
    byte_level_tokenizer(vocab_size=300).save_pretrained(other)
    teachers = [{"name": "same", "model": str(tiny_causal)}, {"name": "other", "model": str(other)}]
    students = [{"name": "s", "model": str(tiny_causal)}]

    def checked(objectives):
        experiment = Experiment.model_validate(
            {
                **STUDY,
                "teachers": teachers,
                "students": students,
                "collaboration": None,
                "methods": {"objectives": objectives},
            }
        )
        return check_vocabularies(experiment)

    found = checked(["answer", "logit_kd:same", "onpolicy_kd:same", "uld_kd:other"])
    assert found.matched == [(str(tiny_causal), str(tiny_causal))] and not found.not_here
    with pytest.raises(ValueError, match=r"'onpolicy_kd:other'.*different tokenizers.*Use uld_kd:other"):
        checked(["onpolicy_kd:other"])
    teachers.append({"name": "hub", "model": "nobody/not-on-this-machine"})  # nothing is downloaded
    found = checked(["logit_kd:hub"])
    assert found.not_here == [(str(tiny_causal), "nobody/not-on-this-machine")]
    assert "1 pair(s) not checked here" in found.lines()[0]
    assert checked(["answer", "uld_kd:other"]).lines() == []


@pytest.mark.slow
def test_a_study_compares_answers_off_policy_and_on_policy_kd_for_the_same_student(tmp_path, tiny_causal):
    from conftest import build_tiny

    from tinystudent.experiments.runner import run_experiment
    from tinystudent.report import render_report, validate_study
    from tinystudent.store import Store

    teacher = build_tiny("causal", tmp_path / "teacher", seed=1)  # another model, the same tokenizer
    config = tmp_path / "kd.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            name: kd
            task: {{name: {write_toy_task(tmp_path)}, train_limit: 12, valid_limit: 4, test_limit: 8}}
            teachers: [{{name: big, model: {teacher}}}]
            students: [{{name: s, model: {tiny_causal}}}]
            methods: {{finetune: [full], objectives: [answer, "logit_kd:big", "onpolicy_kd:big"]}}
            training: {{steps: 2, batch_size: 4, eval_before: false, onpolicy_lambda: 1.0,
                        onpolicy_max_new_tokens: 4}}
            measure_bits_per_byte: false
            eval_batch_size: 8
            """
        )
    )
    experiment = load_experiment(config)
    with Store(tmp_path / "r.sqlite") as store:
        study = run_experiment(experiment, store, tmp_path / "out")
        taught = {r["objective"]: r for r in study["runs"] if r["group"] == "taught"}
        trained = {o: store.run(r["run_key"])["result"]["train"] for o, r in taught.items()}
    assert set(taught) == {"answer", "logit_kd:big", "onpolicy_kd:big"}
    assert all(0 <= r["acc"] <= 1 for r in taught.values())
    assert trained["onpolicy_kd:big"]["config"]["onpolicy_lambda"] == 1.0  # the study's training block
    assert trained["logit_kd:big"]["config"]["weights"]["logit_kd"] == {"big": 1.0}
    assert trained["answer"]["config"]["weights"].get("logit_kd", 0) == 0
    assert trained["onpolicy_kd:big"]["config"]["weights"]["onpolicy_kd"] == {"big": 1.0}
    assert len({t["run_key"] for t in trained.values()}) == 3
    assert [v["teacher"] for v in study["verdict"] if v["by"] == "params"] == ["big"]
    paths = render_report(validate_study(study), tmp_path / "report")
    markdown = paths["markdown"].read_text()
    for label in ("s / full / answer", "s / full / logit_kd:big", "s / full / onpolicy_kd:big"):
        assert label in markdown, label
