"""Rationales from elsewhere: TinyLLM's real files (alignment checks) and the generic JSONL."""

from __future__ import annotations

import json
import shutil

import pytest

from tinystudent.store import Store
from tinystudent.tasks import Example, TaskFormatError, load_task
from tinystudent.teachers import (
    FLAN,
    LLAMA,
    export_rationales_jsonl,
    import_tinyllm_rationales,
    load_rationales,
    read_rationales_jsonl,
    read_tinyllm,
    store_rationales,
)


@pytest.fixture(scope="module")
def bioasq(shared_dir):
    return shared_dir / "data" / "tinyllm" / "bioasq"


@pytest.fixture(scope="module")
def bioasq_train(bioasq):
    return read_tinyllm(bioasq, "train")


def test_bioasq_train_rationales_line_up_with_the_questions(bioasq, bioasq_train):
    questions = load_task(str(bioasq)).split("train")
    assert [q.id for q in bioasq_train.questions] == [q.id for q in questions]
    assert len(questions) == 976
    by_teacher = import_tinyllm_rationales(bioasq, "train")
    # All 976 strings carry both teachers' markers, but some rationales say nothing: FLAN-T5 has
    # 5 that are only "Let's think step by step." and 1 "nan"; LLaMA-2 has 30 that are "nan"
    # or only the trigger phrase. Those are left out, so 970 and 946 remain.
    assert len(by_teacher[FLAN]) == 970 and len(bioasq_train.missing[FLAN]) == 6
    assert len(by_teacher[LLAMA]) == 946 and len(bioasq_train.missing[LLAMA]) == 30
    assert set(by_teacher[FLAN]) | set(bioasq_train.missing[FLAN]) == {q.id for q in questions}
    first = questions[0]  # "Is Tuberous Sclerosis a genetic disease?" (gold: yes)
    assert "genetic disease" in by_teacher[FLAN][first.id]
    assert not by_teacher[FLAN][first.id].startswith("Let's think")
    assert "Thus, the answer is" not in by_teacher[FLAN][first.id]
    flan = [r for r in bioasq_train.rationales if r.teacher == FLAN]
    # The teachers were told the gold answer, so FLAN-T5's stated letter is always the gold one.
    gold = {q.id: q.answer for q in questions}
    assert all(r.answer == gold[r.example_id] for r in flan)


def test_llama_run_on_is_cut(bioasq_train):
    llama = [r for r in bioasq_train.rationales if r.teacher == LLAMA]
    assert not any("\nQ:" in r.text or "Answer Choices:" in r.text or "llama rationale" in r.text for r in llama)
    assert sum("\nQ" in (r.raw or "") or "Questions:" in (r.raw or "") for r in llama) > 0


def test_imported_rationales_go_to_the_cache_and_come_back(bioasq, bioasq_train, tmp_path):
    with Store(tmp_path / "cache.sqlite") as store:
        stored = store_rationales(store, bioasq_train.rationales, str(bioasq), bioasq_train.questions)
        assert stored == 970 + 946
        again = store_rationales(store, bioasq_train.rationales, str(bioasq), bioasq_train.questions)
        assert again == stored
        count = store.db.execute("SELECT COUNT(*) FROM teacher_outputs").fetchone()[0]
        assert count == stored  # importing again replaces, never duplicates
        flan = load_rationales(store, FLAN, str(bioasq))
        # the same folder named another way finds the same rows
        assert load_rationales(store, FLAN, str(bioasq.resolve()) + "/") == flan
        assert flan == bioasq_train.by_teacher()[FLAN]
        matching = load_rationales(store, FLAN, str(bioasq), only_matching=True)
        assert len(matching) == 970


def _copy_bioasq(bioasq, tmp_path):
    target = tmp_path / "bioasq"
    shutil.copytree(bioasq, target)
    return target


def test_a_truncated_rationale_file_is_refused(bioasq, tmp_path):
    folder = _copy_bioasq(bioasq, tmp_path)
    last = folder / "llm" / "train_CoT_1.json"
    strings = json.loads(last.read_text())
    last.write_text(json.dumps(strings[:-10]))
    with pytest.raises(TaskFormatError, match="976 questions but the rationale files hold 966 strings"):
        import_tinyllm_rationales(folder, "train")
    first = folder / "llm" / "train_CoT_0.json"
    first.write_text(json.dumps(json.loads(first.read_text())[:450]))
    with pytest.raises(TaskFormatError, match="train_CoT_0.json: the file: 500 rationale strings, found 450"):
        import_tinyllm_rationales(folder, "train")


def test_a_file_cut_mid_json_is_refused(bioasq, tmp_path):
    folder = _copy_bioasq(bioasq, tmp_path)
    path = folder / "llm" / "train_CoT_1.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(TaskFormatError, match="train_CoT_1.json.*looks truncated"):
        import_tinyllm_rationales(folder, "train")


def test_rationales_out_of_order_are_refused(bioasq, tmp_path):
    folder = _copy_bioasq(bioasq, tmp_path)
    path = folder / "llm" / "train_CoT_0.json"
    strings = json.loads(path.read_text())
    strings[3], strings[4] = strings[4], strings[3]
    path.write_text(json.dumps(strings))
    with pytest.raises(TaskFormatError, match="string 3: the rationale of question .* echoes a different question"):
        import_tinyllm_rationales(folder, "train")


def test_a_missing_chunk_is_refused(bioasq, tmp_path):
    folder = _copy_bioasq(bioasq, tmp_path)
    (folder / "llm" / "train_CoT_0.json").rename(folder / "llm" / "train_CoT_7.json")
    with pytest.raises(TaskFormatError, match="train_CoT_0.json.* is missing"):
        import_tinyllm_rationales(folder, "train")


QUESTIONS = [
    Example("q1", "Which gas do plants take in?", ("oxygen", "carbon dioxide"), 1),
    Example("q2", "Is the sun a star?", ("yes", "no"), 0),
]


def test_jsonl_import_export_round_trip(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"id": "q1", "teacher": "gpt-x", "rationale": "Plants take in CO2.", "answer": "B"})
        + "\n\n"
        + json.dumps({"id": "q2", "teacher": "gpt-x", "rationale": "The sun is a star.", "answer": "yes"})
        + "\n"
        + json.dumps({"id": "q2", "teacher": "other", "rationale": "It shines.", "answer": 1})
        + "\n"
    )
    found = read_rationales_jsonl(source, QUESTIONS)
    assert [(r.teacher, r.example_id, r.answer) for r in found] == [
        ("gpt-x", "q1", 1),
        ("gpt-x", "q2", 0),
        ("other", "q2", 1),
    ]
    with Store(tmp_path / "db.sqlite") as store:
        store_rationales(store, found, "toy", QUESTIONS)
        assert load_rationales(store, "gpt-x", "toy") == {"q1": "Plants take in CO2.", "q2": "The sun is a star."}
        assert load_rationales(store, "other", "toy", only_matching=True) == {}
        exported = tmp_path / "out.jsonl"
        assert export_rationales_jsonl(store, exported, task="toy") == 3
    back = read_rationales_jsonl(exported, QUESTIONS)
    assert sorted((r.teacher, r.example_id, r.text, r.answer) for r in back) == sorted(
        (r.teacher, r.example_id, r.text, r.answer) for r in found
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "q1", "teacher": "t"}', "line 1: keys id, teacher, rationale.*missing: \\['rationale'\\]"),
        ('{"id": "q1", "teacher": "t", "rationale": "r", "score": 1}', "unknown: \\['score'\\]"),
        ('{"id": "q9", "teacher": "t", "rationale": "r"}', "an id of the task's questions, got 'q9'"),
        ('{"id": "q1", "teacher": "t", "rationale": "r", "answer": 5}', "answer 5 outside"),
        ('{"id": "q1", "teacher": "t", "rationale": "r", "answer": "maybe"}', "index, a letter or a choice's text"),
        ('{"id": "q1", "teacher"', "line 1: one JSON object per line"),
        ("", "the file: at least one \\{id, teacher, rationale\\} line, found none"),
        (
            '{"id": "q1", "teacher": "t", "rationale": "r"}\n{"id": "q1", "teacher": "t", "rationale": "other"}',
            "line 2: one rationale per teacher and question; 't' already has a different one for 'q1' at line 1",
        ),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TaskFormatError, match=message):
        read_rationales_jsonl(path, QUESTIONS)


def test_the_same_line_twice_is_imported_once(tmp_path):
    path = tmp_path / "twice.jsonl"
    line = json.dumps({"id": "q1", "teacher": "t", "rationale": "r", "answer": 1})
    path.write_text(f"{line}\n{line}\n")
    assert len(read_rationales_jsonl(path, QUESTIONS)) == 1


def test_import_tinyllm_command(bioasq, tmp_path):
    from typer.testing import CliRunner

    from tinystudent.cli import app

    result = CliRunner().invoke(
        app,
        [
            "rationales",
            "import-tinyllm",
            str(bioasq),
            "--split",
            "valid",
            "--db",
            str(tmp_path / "db.sqlite"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["questions"] == 109 and payload["split"] == "validation"
    assert payload["rationales"][FLAN] + payload["without_rationale"][FLAN] == 109
    assert payload["stored"] == sum(payload["rationales"].values())
