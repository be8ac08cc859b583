"""Data that ships inside tinystudent, so the biomedical study runs with no hub and no other folder.

`bioasq`: TinyLLM's BioASQ yes/no split (Tian et al. 2024; train 976, validation 109, test 123)
with the rationales its two teachers wrote for the train and validation questions (FLAN-T5-XL and
LLaMA-2-chat-7B). It is TinyLLM's data read by our own loaders (`scripts/vendor_bioasq.py`), one
gzip file with TinyLLM's Apache-2.0 licence beside it (`data/bioasq/LICENSE`, `NOTICE.md`).
The file is read once per process.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

from tinystudent.tasks.schema import Example, TaskData, TaskFormatError, check_examples

BIOASQ_DIR = Path(__file__).resolve().parent / "data" / "bioasq"
BIOASQ_FILE = BIOASQ_DIR / "bioasq.json.gz"
FORMAT = "tinystudent-bioasq/1"
YES_NO = ("yes", "no")


@functools.lru_cache(maxsize=1)
def _payload() -> dict:
    try:
        with gzip.open(BIOASQ_FILE, "rt", encoding="utf-8") as handle:
            payload = json.load(handle)
    except (OSError, EOFError, json.JSONDecodeError) as err:
        raise TaskFormatError(
            BIOASQ_FILE,
            "the file",
            "the BioASQ data shipped with tinystudent",
            f"it is missing or damaged ({err}); reinstall tinystudent",
        ) from None
    if payload.get("format") != FORMAT:
        raise TaskFormatError(
            BIOASQ_FILE, "format", f"{FORMAT}, found {payload.get('format')!r}", "reinstall tinystudent"
        )
    return payload


@functools.lru_cache(maxsize=1)
def load_bioasq() -> TaskData:
    """TinyLLM's BioASQ split: evidence in `context`, the question, choices yes/no."""
    splits = {}
    for split, rows in _payload()["splits"].items():
        examples = [
            Example(
                row["id"],
                row["question"],
                YES_NO,
                YES_NO.index(row["answer"]),
                row["context"],
                None,
                {"file": str(BIOASQ_FILE), "where": f"{split}[{i}]", "format": "bundled"},
            )
            for i, row in enumerate(rows)
        ]
        check_examples(examples, BIOASQ_FILE)
        splits[split] = examples
    origin = {
        "source": "bundled",
        "file": BIOASQ_FILE.name,
        "from": _payload()["source"],
        "splits": "TinyLLM's own (train 976, validation 109, test 123)",
    }
    return TaskData("bioasq", splits, origin)


def bundled_rationales(split: str = "train") -> dict[str, dict[str, tuple[str, int | None]]]:
    """Teacher -> question id -> (rationale, the answer index it states or None), for `split`
    (train or validation: the test rationales are not shipped)."""
    found = {}
    for teacher, by_split in _payload()["rationales"].items():
        if split not in by_split:
            raise KeyError(f"the bundled BioASQ rationales cover {sorted(by_split)}, not {split!r}")
        found[teacher] = {qid: (text, answer) for qid, (text, answer) in by_split[split].items()}
    return found
