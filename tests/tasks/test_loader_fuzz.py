"""Fuzzing the task loaders: whatever shape a JSON, JSON Lines or CSV file has, loading it either
works or raises our clear input error (`TaskFormatError`, naming the file) and nothing else."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinystudent.tasks import load_task
from tinystudent.tasks.schema import TaskFormatError

# Field names the known formats look for, so the fuzzer reaches past "not a known format".
KEYS = [
    "id",
    "question",
    "choices",
    "answer",
    "answerKey",
    "context",
    "label",
    "text",
    "question_stem",
    "stem",
    "final_decision",
    "QUESTION",
    "CONTEXTS",
    "body",
    "type",
    "exact_answer",
    "snippets",
    "fact1",
    "rationale",
    "sentence",
    "options",
    "q",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["A", "B", "yes", "no", "maybe", "0", "1", "", "|"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)),
    max_leaves=20,
)
choice_lists = st.one_of(st.lists(st.one_of(st.text(max_size=6), scalars, values), max_size=5), values)
# Near-valid records of the generic and ARC shapes, with any value in any field.
generic = st.fixed_dictionaries(
    {
        "question": st.one_of(st.text(max_size=20), values),
        "choices": choice_lists,
        "answer": st.one_of(scalars, values),
    },
    optional={"id": st.one_of(st.text(max_size=4), scalars), "context": values},
)
arc = st.fixed_dictionaries(
    {
        "id": st.text(max_size=4),
        "answerKey": scalars,
        "question": st.fixed_dictionaries(
            {
                "stem": st.one_of(st.text(max_size=9), values),
                "choices": st.lists(st.fixed_dictionaries({"text": scalars, "label": scalars}), max_size=4),
            }
        ),
    }
)
records = st.one_of(generic, arc, st.dictionaries(st.sampled_from(KEYS), values, max_size=8), values)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load(name: str, content: bytes, columns: dict | None = None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            load_task(str(path), columns=columns)
        except TaskFormatError as err:
            assert str(path) in str(err)


@SETTINGS
@given(st.lists(records, min_size=1, max_size=6))
def test_any_json_lines(rows):
    load("task.jsonl", "\n".join(json.dumps(r) for r in rows).encode())


@SETTINGS
@given(values)
def test_any_json_document(document):
    load("task.json", json.dumps(document).encode())


@SETTINGS
@given(st.lists(records, min_size=1, max_size=6))
def test_any_json_lines_with_a_column_mapping(rows):
    load(
        "mine.jsonl",
        "\n".join(json.dumps(r) for r in rows).encode(),
        {"question": "question", "choices": "choices", "answer": "answer"},
    )


@SETTINGS
@given(
    st.lists(st.lists(st.text(max_size=10), min_size=0, max_size=5), min_size=0, max_size=6),
    st.sampled_from(
        [
            {"question": "q", "choices": "a|b", "answer": "y"},
            {"question": "q", "choices": "c", "answer": "y", "id": "q"},
        ]
    ),
)
def test_any_csv(rows, columns):
    text = io.StringIO()
    csv.writer(text).writerows([["q", "a", "b", "c", "y"], *rows])
    load("mine.csv", text.getvalue().encode(), columns)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes(content):
    load("task.jsonl", content)
    load("task.jsonl.gz", b"\x1f\x8b" + content)
