"""Rationales written elsewhere: TinyLLM's files, and a generic JSONL for import and export.

TinyLLM (`<ds>/llm/<split>_CoT_<k>.json`, see shared/data/tinyllm/README.md): each file is a JSON
array of strings; the files of a split, in order of k, line up one to one with the split's
questions, 500 per file. Each string holds two teachers:

    <FLAN-T5 rationale> Thus, the answer is (<letter>) <text>\\n\\nQ: <question echoed>
    Answer Choices: ... A: Let's think step by step. llama rationale: <LLaMA-2 rationale>

The import checks the alignment three ways and refuses the files when any fails: the number of
strings equals the number of questions, every file but the last holds exactly 500, and every
string's echoed question is the question at its position. Rationales that say nothing (empty,
pandas' "nan", or only "Let's think step by step.") are left out and counted.

Generic JSONL, one object per line: `{"id", "teacher", "rationale", "answer"?}` with `answer` an
index, a letter or the text of a choice; export writes the same lines (plus task, strategy and
matches_gold, which import accepts).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tinystudent.evaluation.freeform import final_answer
from tinystudent.evaluation.prompts import LETTERS
from tinystudent.store import Store
from tinystudent.tasks.bundled import BIOASQ_FILE, bundled_rationales
from tinystudent.tasks.files import read_file
from tinystudent.tasks.schema import Example, TaskFormatError, normalize_split
from tinystudent.teachers import cache
from tinystudent.teachers.base import TeacherOutput
from tinystudent.teachers.cleanup import clean_text, is_empty_rationale, stated_answer

FLAN, LLAMA = "flan-t5-xl", "llama-2-chat-7b"
FLAN_MARKER = "Thus, the answer is"
LLAMA_MARKER = "llama rationale: "
CHUNK = 500
TINYLLM_SPLIT_NAMES = {"train": "train", "validation": "valid", "test": "test"}
ECHO = re.compile(r"\n\nQ: (.*?)\nAnswer Choices:", re.DOTALL)
STATED = re.compile(r"^\s*\(([a-zA-Z])\)")
JSONL_KEYS = {"id", "teacher", "rationale", "answer", "task", "strategy", "matches_gold"}


@dataclass
class ImportedRationale:
    """One rationale from a file, with where it came from."""

    teacher: str
    example_id: str
    text: str
    answer: int | None = None
    raw: str | None = None
    source: dict = field(default_factory=dict)


@dataclass
class TinyLLMImport:
    """A split's TinyLLM rationales: the usable ones and what was left out."""

    split: str
    questions: list[Example]
    rationales: list[ImportedRationale]
    files: list[str]
    missing: dict[str, list[str]]  # teacher -> question ids with no usable rationale

    def by_teacher(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {FLAN: {}, LLAMA: {}}
        for r in self.rationales:
            found[r.teacher][r.example_id] = r.text
        return found


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _chunk_files(folder: Path, split: str) -> list[Path]:
    prefix = TINYLLM_SPLIT_NAMES[split]
    files = {}
    for path in (folder / "llm").glob(f"{prefix}_CoT_*.json"):
        k = path.stem.rsplit("_", 1)[1]
        if k.isdigit():
            files[int(k)] = path
    if not files:
        raise FileNotFoundError(f"{folder / 'llm'}: no {prefix}_CoT_<k>.json rationale files for split {split}")
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        raise TaskFormatError(
            folder / "llm",
            "the rationale files",
            f"{prefix}_CoT_0..{max(files)}.json in a "
            f"row; {', '.join(f'{prefix}_CoT_{k}.json' for k in missing)} is missing",
        )
    return [files[k] for k in sorted(files)]


def _read_chunks(files: list[Path]) -> list[tuple[Path, int, str]]:
    strings: list[tuple[Path, int, str]] = []
    for number, path in enumerate(files):
        try:
            chunk = json.loads(path.read_text(encoding="utf-8"))
        except RecursionError:
            raise TaskFormatError(
                path, "the file", "a JSON array of strings, nested at most about 1,000 levels deep"
            ) from None
        except json.JSONDecodeError as err:
            raise TaskFormatError(
                path,
                f"line {err.lineno} column {err.colno}",
                f"a JSON array of strings ({err.msg}); the file looks truncated",
                "fetch the file again",
            ) from None
        if not isinstance(chunk, list) or not all(isinstance(s, str) for s in chunk):
            raise TaskFormatError(path, "the top level", "a JSON array of strings")
        last = number == len(files) - 1
        if (not last and len(chunk) != CHUNK) or not 0 < len(chunk) <= CHUNK:
            raise TaskFormatError(
                path,
                "the file",
                f"{CHUNK} rationale strings{' at most' if last else ''}, "
                f"found {len(chunk)}: the file is truncated or the chunks do not line up "
                "with the questions",
                "fetch the file again",
            )
        strings.extend((path, index, s) for index, s in enumerate(chunk))
    return strings


def _split_string(path: Path, index: int, text: str, question: Example) -> list[ImportedRationale]:
    where = f"string {index}"
    if FLAN_MARKER not in text:
        raise TaskFormatError(path, where, f"FLAN-T5's rationale followed by {FLAN_MARKER!r}")
    flan_raw, after = text.split(FLAN_MARKER, 1)
    echoed = ECHO.search(after)
    if echoed and _normalise(echoed.group(1)) != _normalise(f"{question.context or ''} {question.question}"):
        raise TaskFormatError(
            path,
            where,
            f"the rationale of question {question.id!r}, but it echoes a "
            f"different question ({_normalise(echoed.group(1))[:80]!r}): the rationale "
            "files do not line up with the questions file",
        )
    source = {"file": str(path), "where": where}
    found = []
    letter = STATED.match(after)
    flan_answer = LETTERS.index(letter.group(1).upper()) if letter else None
    if flan_answer is not None and flan_answer >= len(question.choices):
        flan_answer = None
    if not is_empty_rationale(flan_raw):
        found.append(
            ImportedRationale(FLAN, question.id, clean_text(flan_raw, question.question), flan_answer, flan_raw, source)
        )
    if LLAMA_MARKER in after:
        llama_raw = after.split(LLAMA_MARKER, 1)[1]
        if not is_empty_rationale(llama_raw):
            cleaned = clean_text(llama_raw, question.question, truncated=True)  # it often stops mid-sentence
            found.append(
                ImportedRationale(
                    LLAMA, question.id, cleaned, stated_answer(cleaned, question.choices), llama_raw, source
                )
            )
    return found


def read_tinyllm(folder: Path, split: str) -> TinyLLMImport:
    """Read and check a split's TinyLLM rationale files against its questions file."""
    folder = Path(folder)
    split = normalize_split(split)
    if split not in TINYLLM_SPLIT_NAMES:
        raise ValueError(f"split must be train, validation (valid) or test, got {split!r}")
    prefix = TINYLLM_SPLIT_NAMES[split]
    question_files = sorted(folder.glob(f"*_{prefix}.json"))
    if not question_files:
        raise FileNotFoundError(f"{folder}: no *_{prefix}.json questions file for split {split}")
    questions, _ = read_file(question_files[0])
    files = _chunk_files(folder, split)
    strings = _read_chunks(files)
    if len(strings) != len(questions):
        counts = ", ".join(f"{p.name} ({sum(1 for s in strings if s[0] == p)})" for p in files)
        raise TaskFormatError(
            folder / "llm",
            f"the {prefix} rationale files",
            f"one string per question: {question_files[0].name} has {len(questions)} "
            f"questions but the rationale files hold {len(strings)} strings ({counts})",
            "a file is truncated or missing; fetch it again",
        )
    rationales = []
    for (path, index, text), question in zip(strings, questions):
        rationales.extend(_split_string(path, index, text, question))
    present = {(r.teacher, r.example_id) for r in rationales}
    missing = {t: [q.id for q in questions if (t, q.id) not in present] for t in (FLAN, LLAMA)}
    return TinyLLMImport(split, questions, rationales, [str(p) for p in files], missing)


def read_bundled(split: str = "train") -> list[ImportedRationale]:
    """The rationales shipped with tinystudent for the `bioasq` task (TinyLLM's two teachers,
    train and validation splits; see `tasks.bundled`)."""

    found = []
    for teacher, by_id in bundled_rationales(normalize_split(split)).items():
        for example_id, (text, answer) in by_id.items():
            found.append(
                ImportedRationale(teacher, example_id, text, answer, None, {"file": BIOASQ_FILE.name, "split": split})
            )
    return found


def import_tinyllm_rationales(folder: Path, split: str) -> dict[str, dict[str, str]]:
    """TinyLLM's rationales for one split: {teacher name: {question id: rationale}}, teachers
    `flan-t5-xl` and `llama-2-chat-7b`. Raises TaskFormatError when the files do not line up."""
    return read_tinyllm(Path(folder), split).by_teacher()


def store_rationales(
    store: Store, rationales: Iterable[ImportedRationale], task: str, questions: Sequence[Example] | None = None
) -> int:
    """Put imported rationales in the teacher cache (strategy `imported`), one transaction each;
    importing again replaces them. `questions` gives gold answers for `matches_gold`."""
    by_id = {q.id: q for q in questions or []}
    gold = {q.id: q.answer for q in questions or []}
    task_name = cache.task_key(task)
    count = 0
    for r in rationales:
        key = cache.cache_key(imported=True, teacher=r.teacher, task=task_name, example=r.example_id)
        matches = None if r.answer is None or r.example_id not in gold else r.answer == gold[r.example_id]
        question = by_id.get(r.example_id)
        if question is not None and question.free_form:  # judged by its final answer; a gold solution is gold
            stated = final_answer(r.text, question.answer_text)
            matches = True if r.source.get("gold") else stated is not None and stated[1]
        output = TeacherOutput(
            teacher=cache.teacher_key(r.teacher),
            example_id=r.example_id,
            strategy="imported",
            text=r.text,
            answer=r.answer,
            choice_logprobs=None,
            matches_gold=matches,
            cache_key=key,
            task=task_name,
            meta={"raw": r.raw, "source": r.source},
        )
        cache.save(store, output, None, replace=True)
        count += 1
    return count


def _answer_index(value, example: Example | None, path: Path, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TaskFormatError(path, where, f"'answer' as an index, a letter or a choice's text, got {value!r}")
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS:
        index = LETTERS.index(value.strip().upper())
    elif (
        isinstance(value, str) and example is not None and value.strip().lower() in [c.lower() for c in example.choices]
    ):
        return [c.lower() for c in example.choices].index(value.strip().lower())
    else:
        raise TaskFormatError(path, where, f"'answer' as an index, a letter or a choice's text, got {value!r}")
    if example is not None and not 0 <= index < len(example.choices):
        raise TaskFormatError(path, where, f"answer {value!r} outside the question's {len(example.choices)} choices")
    return index


def read_rationales_jsonl(path: Path, questions: Sequence[Example] | None = None) -> list[ImportedRationale]:
    """Read `{id, teacher, rationale, answer?}` lines; with `questions`, every id must be one of them."""
    path = Path(path)
    by_id = {q.id: q for q in questions} if questions is not None else None
    found: list = []
    seen: dict[tuple, tuple[str, ImportedRationale]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(line)
        except RecursionError:
            raise TaskFormatError(
                path, where, "one JSON object per line, nested at most about 1,000 levels deep"
            ) from None
        except json.JSONDecodeError as err:
            raise TaskFormatError(path, where, f"one JSON object per line ({err.msg})") from None
        if not isinstance(record, dict):
            raise TaskFormatError(path, where, "a JSON object {id, teacher, rationale, answer?}")
        unknown = sorted(set(record) - JSONL_KEYS)
        absent = [k for k in ("id", "teacher", "rationale") if not record.get(k) and record.get(k) != 0]
        if unknown or absent:
            raise TaskFormatError(
                path,
                where,
                f"keys id, teacher, rationale (and optionally answer); "
                f"{'unknown: ' + str(unknown) if unknown else 'missing: ' + str(absent)}",
            )
        example_id = str(record["id"])
        if by_id is not None and example_id not in by_id:
            raise TaskFormatError(
                path,
                where,
                f"an id of the task's questions, got {example_id!r}",
                "import with the task the rationales were written for",
            )
        example = by_id.get(example_id) if by_id else None
        answer = _answer_index(record.get("answer"), example, path, where)
        key = (str(record["teacher"]), example_id)
        if key in seen:
            first_where, first = seen[key]
            if (first.text, first.answer) != (str(record["rationale"]), answer):
                raise TaskFormatError(
                    path,
                    where,
                    f"one rationale per teacher and question; {key[0]!r} already has "
                    f"a different one for {example_id!r} at {first_where}",
                    "keep one of the two lines",
                )
            continue  # the same line twice: imported once
        rationale = ImportedRationale(
            key[0], example_id, str(record["rationale"]), answer, None, {"file": str(path), "where": where}
        )
        seen[key] = (where, rationale)
        found.append(rationale)
    if not found:
        raise TaskFormatError(path, "the file", "at least one {id, teacher, rationale} line, found none")
    return found


def export_rationales_jsonl(
    store: Store, path: Path, teacher: str | None = None, task: str | None = None, strategy: str | None = None
) -> int:
    """Write cached rationales as JSONL (the format `read_rationales_jsonl` reads); returns the count."""
    rows = [r for r in cache.rows_for(store, teacher, task, strategy) if r["text"]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            record = {
                "id": row["example_id"],
                "teacher": row["teacher"],
                "rationale": row["text"],
                "answer": row["answer"],
                "task": row["task"],
                "strategy": row["strategy"],
                "matches_gold": None if row["matches_gold"] is None else bool(row["matches_gold"]),
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)  # written whole or not at all
    return len(rows)
