"""A test question in what a student learns from is found by its text and refused, by `train`
and by a study, before any model is loaded; the count (zero) is recorded."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinystudent.cli import app
from tinystudent.tasks import Example, load_task
from tinystudent.tasks.contamination import Contamination, check_contamination, drop_contaminated

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bioasq"


def yes_no(qid: str, question: str, context: str = "Some evidence.") -> Example:
    return Example(qid, question, ("yes", "no"), 0, context)


def test_a_question_is_found_under_another_id_case_and_punctuation():
    test = [yes_no("t1", "Is thalidomide used as an immunomodulatory drug nowadays?"), yes_no("t2", "Is it?")]
    copied = yes_no("train-9", "is Thalidomide used, as an immunomodulatory drug nowadays")
    with pytest.raises(Contamination, match=r"train 'train-9' = test 't1'"):
        check_contamination(test, {"train": [copied, yes_no("train-1", "Does p85 homodimerize?")]})
    other_options = Example("v", "Is thalidomide used as an immunomodulatory drug nowadays?", ("a", "b"), 0)
    clean = check_contamination(test, {"validation": [other_options]})  # another question: other choices
    assert clean["overlap"] == 0 and clean["checked"] == {"validation": 1} and clean["test_questions"] == 2


def test_a_passage_holding_a_test_question_is_found():
    test = [yes_no("t1", "Is thalidomide used as an immunomodulatory drug nowadays?"), yes_no("t2", "Is it?")]
    passages = ["Evidence about aspirin.", "Q: Is THALIDOMIDE used as an immunomodulatory drug nowadays? A: yes"]
    with pytest.raises(Contamination, match=r"passage 1 contains test 't1'"):
        check_contamination(test, {}, passages)
    assert check_contamination(test, {}, ["Is it? Who knows."])["checked"] == {"passages": 1}  # too short to look for


def test_drop_leaves_the_test_questions_out_and_says_which():
    test = [yes_no("t1", "Does aspirin inhibit COX-1?")]
    kept, dropped = drop_contaminated(test, {"train": [yes_no("a", "Does aspirin inhibit cox 1"), yes_no("b", "Why?")]})
    assert [ex.id for ex in kept["train"]] == ["b"] and dropped == {"train": ["a"]}


@pytest.fixture
def leaky_task(tmp_path) -> Path:
    """The BioASQ fixture with a test question pasted into the training file under a new id."""
    folder = tmp_path / "leaky"
    shutil.copytree(FIXTURE, folder)
    test = json.loads((folder / "bioasq_test.json").read_text())
    train = json.loads((folder / "bioasq_train.json").read_text())
    train.append({**test[3], "id": "pasted_from_test", "question": test[3]["question"].upper()})
    (folder / "bioasq_train.json").write_text(json.dumps(train))
    return folder


def test_the_fixture_task_is_clean():
    data = load_task(str(FIXTURE))
    splits = {"train": data.split("train"), "validation": data.split("validation")}
    assert check_contamination(data.split("test"), splits)["overlap"] == 0


def test_train_refuses_a_training_file_that_holds_a_test_question(leaky_task, tmp_path):
    test_id = json.loads((leaky_task / "bioasq_test.json").read_text())[3]["id"]
    result = CliRunner().invoke(
        app,
        ["train", "--student", "no-such-model", "--task", str(leaky_task), "--out", str(tmp_path / "run")],
    )
    assert result.exit_code != 0
    assert f"train 'pasted_from_test' = test '{test_id}'" in " ".join(result.output.split())
    assert not (tmp_path / "run" / "best").exists()


def test_a_study_refuses_it_at_check_or_drops_it_when_told(leaky_task, tmp_path):
    from tinystudent.experiments.config import load_experiment
    from tinystudent.experiments.data import load_study_data

    config = tmp_path / "leaky.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            name: leaky
            task: {{name: {leaky_task}}}
            teachers: [{{name: paper, backend: imported, reported_acc: 0.6, reported_source: a paper}}]
            students: [{{name: s, model: sentence-transformers/all-MiniLM-L6-v2}}]
            """
        )
    )
    result = CliRunner().invoke(app, ["run", str(config), "--check", "--db", str(tmp_path / "r.sqlite")])
    assert result.exit_code != 0 and "pasted_from_test" in result.output
    data = load_study_data(load_experiment(config, ["task.contamination=drop"]))
    assert data.contamination["dropped"] == {"train": ["pasted_from_test"]} and data.contamination["overlap"] == 0
    assert "pasted_from_test" not in {ex.id for ex in data.splits.train}
    clean = load_study_data(load_experiment(config, [f"task.name={FIXTURE}"]))
    assert clean.contamination["overlap"] == 0 and clean.contamination["checked"]["train"] == 24


def test_the_same_question_asked_of_other_evidence_is_another_question():
    """Qasper asks one question of many papers: only the same question on the same evidence counts."""
    asked = "Do they report results only on English data?"
    test = [yes_no("paper1_0", asked, "We train on the English Penn Treebank and the German TIGER corpus.")]
    other_paper = yes_no("paper2_0", asked, "Our crawl of Weibo posts is in Mandarin; tweets give a second set.")
    same_paper = yes_no("copy", asked.upper(), "We train on the English Penn Treebank and the German TIGER corpus!")
    assert check_contamination(test, {"train": [other_paper]})["overlap"] == 0
    with pytest.raises(Contamination, match="train 'copy' = test 'paper1_0'"):
        check_contamination(test, {"train": [other_paper, same_paper]})


def test_qasper_yes_no_is_carved_by_paper_with_its_evidence():
    data = load_task("qasper_yesno")
    sizes = {split: len(rows) for split, rows in data.splits.items()}
    assert sum(sizes.values()) == 319 and sizes["test"] > 100
    papers = {split: {ex.id.rsplit("_", 1)[0] for ex in rows} for split, rows in data.splits.items()}
    assert not papers["train"] & papers["test"] and not papers["validation"] & papers["test"]
    assert all(ex.context and ex.choices == ("Yes", "No") for ex in data.split("test"))
    assert data.origin["splits"]["by"] == "paper" and "carved" in data.origin["splits"]["note"]
    splits = {"train": data.split("train"), "validation": data.split("validation")}
    assert check_contamination(data.split("test"), splits)["overlap"] == 0
