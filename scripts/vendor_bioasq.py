"""Build the BioASQ split that ships inside tinystudent (`tasks/data/bioasq/bioasq.json.gz`).

It is made from TinyLLM's files (shared/data/tinyllm/bioasq: TinyLLM's BioASQ yes/no split and
the rationales of its two teachers, FLAN-T5-XL and LLaMA-2-chat-7B), read by tinystudent's own
loaders, so the shipped data is exactly what `load_task("../shared/data/tinyllm/bioasq")` and
`read_tinyllm(...)` give: questions with their evidence split off, cleaned rationales. Test
rationales are left out: no student may train on them.

    .venv/bin/python scripts/vendor_bioasq.py ../shared/data/tinyllm/bioasq

The output is deterministic (sorted keys, gzip without a timestamp), so rebuilding from the same
files gives the same bytes.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

from tinystudent.tasks.bundled import BIOASQ_DIR, BIOASQ_FILE, FORMAT
from tinystudent.tasks.files import read_folder
from tinystudent.teachers.rationale_files import read_tinyllm

RATIONALE_SPLITS = ("train", "validation")


def build(folder: Path) -> dict:
    data = read_folder(folder)
    splits = {
        split: [
            {"id": ex.id, "question": ex.question, "context": ex.context, "answer": ex.answer_text} for ex in examples
        ]
        for split, examples in data.splits.items()
    }
    rationales: dict[str, dict[str, dict]] = {}
    for split in RATIONALE_SPLITS:
        for r in read_tinyllm(folder, split).rationales:
            rationales.setdefault(r.teacher, {}).setdefault(split, {})[r.example_id] = [r.text, r.answer]
    return {
        "format": FORMAT,
        "splits": splits,
        "rationales": rationales,
        "source": "TinyLLM (Tian et al. 2024, arXiv 2402.04616), github.com/YikunHan42/TinyLLM, "
        "data/bioasq, Apache-2.0; questions from the BioASQ challenge",
    }


def main(folder: str) -> None:
    payload = build(Path(folder))
    raw = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    BIOASQ_DIR.mkdir(parents=True, exist_ok=True)
    with open(BIOASQ_FILE, "wb") as handle:
        with gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=9, mtime=0, filename="") as zipped:
            zipped.write(raw)
    license_file = Path(folder).parent / "LICENSE"
    if license_file.exists():
        shutil.copy(license_file, BIOASQ_DIR / "LICENSE")
    counts = {k: len(v) for k, v in payload["splits"].items()}
    print(f"{BIOASQ_FILE}: {BIOASQ_FILE.stat().st_size:,} bytes ({len(raw):,} uncompressed), {counts}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/tinyllm/bioasq")
