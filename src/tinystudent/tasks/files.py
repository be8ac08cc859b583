"""Reading benchmark files and folders whose format is recognised by content, not by name."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any, Callable

from tinystudent.tasks.formats import Converter, detect_format, from_bioasq, from_pubmedqa_original, mapped_converter
from tinystudent.tasks.schema import MAX_FIELD_CHARS, SPLITS, Example, TaskData, TaskFormatError, check_examples

# Default fractions for sources that ship no split of their own.
SEEDED_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TaskFormatError(path, "the file", "a readable file", str(err)) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise TaskFormatError(
                path,
                "the file",
                f"gzip-compressed data, as its first bytes say ({err})",
                "it is truncated or not gzip: download it again, or check it with gunzip -t",
            ) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TaskFormatError(path, f"byte {err.start}", "UTF-8 text") from None


def read_records(path: Path) -> tuple[Any, list[str] | None]:
    """Parse a JSON document or JSON Lines, whichever the content is.

    Returns the parsed document (JSON) or the list of records (JSONL) and, for JSONL, the
    `line N` label of each record.
    """
    text = _read_text(path)
    if not text.strip():
        raise TaskFormatError(path, "the file", "JSON or JSON Lines content, found an empty file")
    try:
        return json.loads(text), None
    except RecursionError:
        raise TaskFormatError(
            path,
            "the file",
            "JSON nested at most about 1,000 levels deep",
            "this file is nested deeper; it is probably not a task file",
        ) from None
    except json.JSONDecodeError as whole_err:
        first_error = whole_err
    records, wheres = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except RecursionError:
            raise TaskFormatError(path, f"line {number}", "JSON nested at most about 1,000 levels deep") from None
        except json.JSONDecodeError as err:
            if number == 1 and len(records) == 0:
                raise TaskFormatError(
                    path,
                    f"line {first_error.lineno} column {first_error.colno}",
                    f"valid JSON or JSON Lines ({first_error.msg})",
                ) from None
            raise TaskFormatError(path, f"line {number}", f"one JSON object per line ({err.msg})") from None
        wheres.append(f"line {number}")
    return records, wheres


def read_csv(path: Path) -> tuple[list[dict], list[str]]:

    text = _read_text(path)
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.DictReader(text.splitlines())
    rows, wheres = [], []
    try:
        for row in reader:
            rows.append(row)
            wheres.append(f"line {reader.line_num}")
    except csv.Error as err:
        raise TaskFormatError(
            path,
            f"line {reader.line_num + 1}",
            f"a CSV row ({err})",
            f"fields are limited to {MAX_FIELD_CHARS:,} characters; fix or drop this row",
        ) from None
    return rows, wheres


def _convert_all(
    records: list, wheres: list[str], path: Path, converter: Converter | None, format_name: str | None
) -> tuple[list[Example], str]:
    examples = []
    for record, where in zip(records, wheres):
        if converter is None:
            found = detect_format(record)
            if found is None:
                raise TaskFormatError(
                    path,
                    where,
                    "a record of a known format (ARC, OpenBookQA, BioASQ, PubMedQA, SciQ, TinyLLM, GSM8K, "
                    f"SVAMP); its keys are {sorted(record) if isinstance(record, dict) else type(record).__name__}",
                    "for your own columns pass a column mapping (--columns question=...,choices=...,answer=...; "
                    "without choices=, free-form answers)",
                )
            format_name, converter = found
        examples.append(_with_source(converter(record, where, str(path)), path, where, format_name))
    check_examples(examples, path)
    return examples, format_name or "empty"


def read_file(path: Path, columns: dict[str, str] | None = None) -> tuple[list[Example], str]:
    """Read every example of one file; returns the examples and the name of the detected format."""
    converter = mapped_converter(columns) if columns else None
    format_name = "mapped" if columns else None
    if path.suffix.lower() == ".csv":
        if not columns:
            raise TaskFormatError(
                path,
                "the file",
                "a column mapping for a CSV file",
                "pass --columns question=...,choices=A|B|C|D,answer=...",
            )
        rows, lines = read_csv(path)
        return _convert_all(rows, lines, path, converter, format_name)
    document, wheres = read_records(path)
    if wheres is not None:
        return _convert_all(document, wheres, path, converter, format_name)
    if isinstance(document, list):
        return _convert_all(document, [f"record {i}" for i in range(len(document))], path, converter, format_name)
    if isinstance(document, dict) and "questions" in document:
        return _read_bioasq(document["questions"], path)
    if (
        isinstance(document, dict)
        and document
        and all(isinstance(v, dict) and "QUESTION" in v for v in document.values())
    ):
        examples = [from_pubmedqa_original(pmid, rec, f"record {pmid!r}", str(path)) for pmid, rec in document.items()]
        examples = [_with_source(ex, path, f"record {ex.id!r}", "pubmedqa_original") for ex in examples]
        check_examples(examples, path)
        return examples, "pubmedqa_original"
    one_line = len(_read_text(path).strip().splitlines()) == 1
    if isinstance(document, dict) and (columns or detect_format(document) or one_line):
        return _convert_all([document], ["line 1"], path, converter, format_name)  # one-line JSONL
    raise TaskFormatError(
        path,
        "the top level",
        "a list of records, JSON Lines, BioASQ's {'questions': [...]} or PubMedQA's {pmid: {...}}",
    )


def _with_source(ex: Example, path: Path, where: str, format_name: str | None) -> Example:
    """`ex` with where it was read from (file, record or line, format) as its source."""
    return dataclasses.replace(ex, source={"file": str(path), "where": where, "format": format_name})


def _read_bioasq(questions: list, path: Path) -> tuple[list[Example], str]:
    """Official BioASQ training JSON: keep the yes/no questions, snippets as context."""
    examples = []
    for i, question in enumerate(questions):
        where = f"questions[{i}]"
        if not isinstance(question, dict) or "type" not in question:
            raise TaskFormatError(path, where, "a question object with a 'type'")
        if question["type"] != "yesno":
            continue
        examples.append(_with_source(from_bioasq(question, where, str(path)), path, where, "bioasq"))
    check_examples(examples, path)
    return examples, "bioasq"


def seeded_split(
    examples: list[Example],
    seed: int = 0,
    fractions: dict[str, float] | None = None,
    group: Callable[[Example], str] | None = None,
) -> dict[str, list[Example]]:
    """A deterministic, disjoint split: examples are ordered by a seeded hash of their id and cut.

    The same ids and seed give the same split whatever the file order, and adding examples never
    moves an existing one across splits more than the cut points require. With `group` (an
    example's paper, say), the groups are ordered by the hash of their name and each stays whole
    in one split: a cut point moves to the end of the group it falls in.
    """
    fractions = fractions or SEEDED_FRACTIONS
    key = group or (lambda ex: ex.id)
    ordered = sorted(examples, key=lambda ex: (hashlib.sha256(f"{seed}:{key(ex)}".encode()).hexdigest(), ex.id))
    splits, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        end = len(ordered) if i == len(names) - 1 else start + round(fractions[name] * len(ordered))
        while group and 0 < end < len(ordered) and key(ordered[end]) == key(ordered[end - 1]):
            end += 1
        end = max(start, end)
        splits[name] = ordered[start:end]
        start = end
    return splits


TINYLLM_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


def read_folder(path: Path, seed: int = 0) -> TaskData:
    """A folder: a saved Hugging Face dataset, or one file per split (`*_train.json`, ...)."""
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return read_saved_dataset(path)
    splits: dict[str, list] = {}
    origin: dict[str, Any] = {"path": str(path), "splits": "files"}
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        stem = file.name.split(".")[0].lower()
        for suffix, split in TINYLLM_SPLITS.items():
            if stem.endswith(f"_{suffix}") or stem == suffix or stem == split:
                splits[split], origin["format"] = read_file(file)
                origin.setdefault("files", {})[split] = file.name
    if not splits:
        raise TaskFormatError(
            path,
            "the folder",
            "files named like `<name>_train.json`, "
            "`<name>_valid.json`, `<name>_test.json`, or a saved Hugging Face dataset",
        )
    return TaskData(str(path), splits, origin)


def read_saved_dataset(path: Path) -> TaskData:
    """A dataset written by `datasets`' `save_to_disk` (one split, or a DatasetDict)."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {path.name: loaded}
    splits, format_name = {}, None
    for split, rows in parts.items():
        records = list(rows)
        examples, format_name = _convert_all(records, [f"row {i}" for i in range(len(records))], path, None, None)
        splits[split] = examples
    return TaskData(str(path), splits, {"path": str(path), "format": format_name, "splits": "source"})


def read_path(path: Path, seed: int = 0, columns: dict[str, str] | None = None) -> TaskData:
    """Any file or folder; a single file without splits of its own is split from `seed`."""
    if not path.exists():
        raise TaskFormatError(
            path, "the path", "an existing file or folder", "check the spelling, or name a task such as arc_easy"
        )
    if path.is_dir():
        return read_folder(path, seed)
    examples, format_name = read_file(path, columns)
    splits = seeded_split(examples, seed)
    splits["all"] = examples
    origin = {
        "path": str(path),
        "format": format_name,
        "splits": {"method": "seeded", "seed": seed, "fractions": SEEDED_FRACTIONS},
    }
    return TaskData(str(path), splits, origin)


__all__ = ["SPLITS", "read_file", "read_folder", "read_path", "read_records", "seeded_split"]
