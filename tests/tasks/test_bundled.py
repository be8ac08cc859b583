"""The BioASQ split shipped inside tinystudent: counts, hashes, rationales, and agreement with
TinyLLM's own files (when ../shared is here)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from tinystudent.tasks import data_hash, load_task
from tinystudent.tasks.bundled import BIOASQ_DIR, BIOASQ_FILE, _payload, load_bioasq
from tinystudent.teachers import FLAN, LLAMA, read_bundled

# Regression values: a change to the shipped file or to the loader shows here.
HASHES = {"train": "ce9e08f6947602d0", "validation": "627b058dfd73a1ca", "test": "7c5c525ce244fb2e"}


def test_bundled_bioasq_loads_offline_with_tinyllms_counts():
    data = load_task("bioasq")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 976, "validation": 109, "test": 123}
    answers = [ex.answer_text for ex in data.split("test")]
    assert answers.count("yes") == 82 and answers.count("no") == 41  # majority "yes" = 66.7%
    assert {split: data_hash(examples) for split, examples in data.splits.items()} == HASHES
    assert data.origin["source"] == "bundled"
    # The question is the last line of TinyLLM's text; the evidence before it is the context.
    assert all(ex.context and ex.question.strip() for ex in data.split("train"))
    assert sum(ex.question.rstrip().endswith("?") for ex in data.split("test")) == 121
    assert all(ex.choices == ("yes", "no") for ex in data.split("validation"))


def test_bundled_data_is_read_once_and_ships_its_licence():
    assert load_bioasq() is load_bioasq()
    assert _payload.cache_info().currsize == 1
    licence = (BIOASQ_DIR / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence
    notice = (BIOASQ_DIR / "NOTICE.md").read_text()
    assert "YikunHan42/TinyLLM" in notice and "BioASQ" in notice
    assert BIOASQ_FILE.stat().st_size < 1_500_000  # compact: gzip, no test rationales


def test_bundled_rationales_cover_train_and_validation_not_test():
    train = read_bundled("train")
    per_teacher = {t: sum(r.teacher == t for r in train) for t in (FLAN, LLAMA)}
    assert per_teacher == {FLAN: 970, LLAMA: 946}  # the rest are empty in TinyLLM's files
    ids = {ex.id for ex in load_task("bioasq").split("train")}
    assert {r.example_id for r in train} <= ids
    assert all(r.text.strip() for r in train)
    assert read_bundled("valid")
    try:
        read_bundled("test")
    except KeyError as err:
        assert "not 'test'" in str(err)
    else:
        raise AssertionError("test rationales must not ship")


def test_bundled_file_is_what_the_vendoring_script_builds_from_tinyllms_files(shared_dir):
    folder = shared_dir / "data" / "tinyllm" / "bioasq"
    spec = importlib.util.spec_from_file_location(
        "vendor", Path(__file__).resolve().parents[2] / "scripts" / "vendor_bioasq.py"
    )
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    rebuilt = json.loads(json.dumps(vendor.build(folder)))
    with gzip.open(BIOASQ_FILE, "rt", encoding="utf-8") as handle:
        shipped = json.load(handle)
    assert rebuilt == shipped
    from_files = load_task(str(folder))
    assert {s: data_hash(e) for s, e in from_files.splits.items()} == HASHES
