"""Malformed input to every command, as a careless or hostile user gives it.

Each case must exit non-zero with one clear message that names the input, print no traceback, and
leave every existing file as it was: the results database, the output folder and the input files
themselves are hashed before and after.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinystudent.cli import app
from tinystudent.store import Store

GOOD = [
    {"id": f"q{i}", "question": f"Is {i} even?", "choices": ["yes", "no"], "answer": "yes" if i % 2 == 0 else "no"}
    for i in range(12)
]


def jsonl(rows) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def nested(depth: int) -> str:
    return (
        '{"id": "a", "question": "Q", "choices": ["x", "y"], "answer": "x", "deep": ' + "[" * depth + "]" * depth + "}"
    )


FILES: dict[str, str | bytes] = {
    "good.jsonl": jsonl(GOOD),
    "bad_json.jsonl": jsonl(GOOD[:2]) + '{"id": "q9", "quest\n',
    "not_gzip.jsonl.gz": b"\x1f\x8b but not really gzip",
    "huge_field.csv": "question,choices,answer\n" + "x" * 1_100_000 + ",a|b,a\n",
    "arrays.jsonl": jsonl([["Q?", "a|b", "a"]]),
    "null_choice.jsonl": jsonl([{"id": "a", "question": "Q", "choices": ["x", None], "answer": "x"}]),
    "string_choices.jsonl": jsonl([{"id": "a", "question": "Q", "choices": "x|y", "answer": "x"}]),
    "bool_answer.jsonl": jsonl([{"id": "a", "question": "Q", "choices": ["x", "y"], "answer": True}]),
    "empty_choices.jsonl": jsonl([{"id": "a", "question": "Q", "choices": [], "answer": "x"}]),
    "duplicate_ids.jsonl": jsonl([GOOD[0], {**GOOD[1], "id": "q0"}]),
    "deep.jsonl": nested(100_000) + "\n",
    "empty.jsonl": "",
    "latin1.jsonl": "".join(jsonl(GOOD[:1])).replace("Is", "Est-ce\xe9").encode("latin-1"),
    "no_weights/config.json": json.dumps({"model_type": "llama"}),
    "pickled/config.json": json.dumps({"model_type": "llama"}),
    "pickled/pytorch_model.bin": b"\x80\x02pickled",
    "tiny.gguf": b"GGUF",
    "adapter/adapter_config.json": json.dumps({"peft_type": "LORA", "r": 2}),
    "adapter/adapter_model.safetensors": b"",
    "not_a_db.sqlite": "this is a text file, not a database\n",
    "study_broken.json": '{"teachers": [{"name": "t"}], "runs": "nope"}',
    "rationales_empty.jsonl": "",
    "rationales_conflict.jsonl": jsonl(
        [{"id": "q0", "teacher": "t", "rationale": "because A"}, {"id": "q0", "teacher": "t", "rationale": "because B"}]
    ),
    "rationales_unknown_id.jsonl": jsonl([{"id": "zzz", "teacher": "t", "rationale": "because"}]),
    "corpus_binary.bin": bytes(range(256)) * 4,
    "bad.yaml": "name: x\nteachers: [\n",
    "not_a_mapping.yaml": "- just\n- a list\n",
    "out/keep.txt": "results of last week\n",
    "plain_file": "a file where a folder belongs\n",
}

EXPERIMENT = """
name: {name}
task: {{name: {task}, test_split: {split}}}
teachers:
  - {{name: teach, model: {model}}}
students:
  - {{name: small, model: {model}, keep_layers: "{keep}"}}
methods: {{finetune: [full], objectives: [{objective}]}}
seeds: {seeds}
"""


def experiment(**changes) -> str:
    values = {
        "name": "ok",
        "task": "{w}/good.jsonl",
        "split": "test",
        "model": "{model}",
        "keep": "first:1",
        "objective": "answer",
        "seeds": "[0]",
        **changes,
    }
    return EXPERIMENT.format(**values)


EXPERIMENTS = {
    "x_every0.yaml": experiment(keep="every:0"),
    "x_ok.yaml": experiment(),
    "x_strategy.yaml": experiment(objective='"rationale:teach"').replace(
        "model: {model}}", "model: {model}, strategy: magic}", 1
    ),
    "x_task.yaml": experiment(task="arc_hard"),
    "x_split.yaml": experiment(split="tst"),
    "x_seeds.yaml": experiment(seeds="[]"),
    "x_name.yaml": experiment(name="../../escape"),
    "x_absolute.yaml": experiment(name="/etc/cron.d"),
    "x_unknown_key.yaml": experiment() + "trainin: {steps: 3}\n",
}

# (case id, command line with {w} = workspace, {model} = a real tiny model, {db} = the existing
#  database; words the message must hold)
CASES = [
    # eval: task files
    ("eval-missing-task", "eval --model {model} --task {w}/nope.jsonl --db {db}", ["nope.jsonl"]),
    ("eval-bad-json", "eval --model {model} --task {w}/bad_json.jsonl --db {db}", ["bad_json.jsonl", "line 3"]),
    ("eval-not-gzip", "eval --model {model} --task {w}/not_gzip.jsonl.gz --db {db}", ["not_gzip.jsonl.gz", "gzip"]),
    (
        "eval-huge-csv-field",
        "eval --model {model} --task {w}/huge_field.csv --db {db} "
        "--columns question=question,choices=choices,answer=answer",
        ["huge_field.csv", "line 2"],
    ),
    (
        "eval-arrays-with-columns",
        "eval --model {model} --task {w}/arrays.jsonl --db {db} --columns question=q,choices=c,answer=a",
        ["arrays.jsonl", "JSON object"],
    ),
    (
        "eval-null-choice",
        "eval --model {model} --task {w}/null_choice.jsonl --db {db}",
        ["null_choice.jsonl", "choice 2"],
    ),
    (
        "eval-string-choices",
        "eval --model {model} --task {w}/string_choices.jsonl --db {db}",
        ["string_choices.jsonl", "list of texts"],
    ),
    (
        "eval-bool-answer",
        "eval --model {model} --task {w}/bool_answer.jsonl --db {db}",
        ["bool_answer.jsonl", "boolean"],
    ),
    ("eval-empty-choices", "eval --model {model} --task {w}/empty_choices.jsonl --db {db}", ["empty_choices.jsonl"]),
    (
        "eval-duplicate-ids",
        "eval --model {model} --task {w}/duplicate_ids.jsonl --db {db}",
        ["duplicate_ids.jsonl", "duplicate id"],
    ),
    ("eval-deep-json", "eval --model {model} --task {w}/deep.jsonl --db {db}", ["deep.jsonl", "nested"]),
    ("eval-empty-file", "eval --model {model} --task {w}/empty.jsonl --db {db}", ["empty.jsonl"]),
    ("eval-latin1", "eval --model {model} --task {w}/latin1.jsonl --db {db}", ["latin1.jsonl", "UTF-8"]),
    ("eval-unknown-task", "eval --model {model} --task arc_hard --db {db}", ["arc_hard"]),
    ("eval-bad-columns", "eval --model {model} --task {w}/good.jsonl --db {db} --columns question", ["--columns"]),
    # eval: models
    ("eval-missing-model", "eval --model {w}/no_such_model --task {w}/good.jsonl --db {db}", ["no_such_model"]),
    ("eval-no-weights", "eval --model {w}/no_weights --task {w}/good.jsonl --db {db}", ["no_weights", "safetensors"]),
    ("eval-pickled-weights", "eval --model {w}/pickled --task {w}/good.jsonl --db {db}", ["pickled", "safetensors"]),
    ("eval-4-byte-gguf", "eval --model {w}/tiny.gguf --task {w}/good.jsonl --db {db}", ["tiny.gguf"]),
    (
        "eval-adapter-without-base",
        "eval --model {w}/adapter --task {w}/good.jsonl --db {db}",
        ["adapter_config.json", "base"],
    ),
    ("eval-not-a-model-file", "eval --model {w}/good.jsonl --task {w}/good.jsonl --db {db}", ["good.jsonl", ".gguf"]),
    # eval: options and outputs
    ("eval-db-is-a-folder", "eval --model {model} --task {w}/good.jsonl --db {w}/out", ["out", "folder"]),
    ("eval-db-not-sqlite", "eval --model {model} --task {w}/good.jsonl --db {w}/not_a_db.sqlite", ["not_a_db.sqlite"]),
    ("eval-db-under-a-file", "eval --model {model} --task {w}/good.jsonl --db {w}/plain_file/r.sqlite", ["plain_file"]),
    ("eval-batch-size-0", "eval --model {model} --task {w}/good.jsonl --db {db} --batch-size 0", ["--batch-size"]),
    ("eval-limit-0", "eval --model {model} --task {w}/good.jsonl --db {db} --limit 0", ["--limit"]),
    ("eval-split", "eval --model {model} --task {w}/good.jsonl --db {db} --split tst", ["tst"]),
    ("eval-mode", "eval --model {model} --task {w}/good.jsonl --db {db} --mode magic", ["magic"]),
    (
        "eval-input-tokens",
        "eval --model {model} --task {w}/good.jsonl --db {db} --max-input-tokens 3",
        ["--max-input-tokens"],
    ),
    # teach
    ("teach-strategy", "teach --teacher {model} --task {w}/good.jsonl --db {db} --strategy magic", ["magic"]),
    ("teach-base-url", "teach --teacher m --task {w}/good.jsonl --db {db} --base-url ftp:/nowhere", ["ftp:/nowhere"]),
    (
        "teach-key-unset",
        "teach --teacher m --task {w}/good.jsonl --db {db} --base-url http://127.0.0.1:9/v1 "
        "--api-key-env TINYSTUDENT_UNSET_KEY",
        ["TINYSTUDENT_UNSET_KEY"],
    ),
    ("teach-bad-task", "teach --teacher {model} --task {w}/bad_json.jsonl --db {db}", ["bad_json.jsonl"]),
    ("teach-batch-size-0", "teach --teacher {model} --task {w}/good.jsonl --db {db} --batch-size 0", ["batch"]),
    # train
    (
        "train-strategy",
        "train --student {model} --task {w}/good.jsonl --db {db} --out {w}/new --strategy magic",
        ["magic"],
    ),
    (
        "train-precision",
        "train --student {model} --task {w}/good.jsonl --db {db} --out {w}/new --precision fp8",
        ["precision", "fp8"],
    ),
    (
        "train-batch-size-0",
        "train --student {model} --task {w}/good.jsonl --db {db} --out {w}/new --batch-size 0",
        ["--batch-size"],
    ),
    (
        "train-objective",
        "train --student {model} --task {w}/good.jsonl --db {db} --out {w}/new --objective magic",
        ["magic"],
    ),
    (
        "train-keep-layers",
        "train --student {model} --task {w}/good.jsonl --db {db} --out {w}/new --keep-layers every:0",
        ["every:0"],
    ),
    (
        "train-out-is-a-file",
        "train --student {model} --task {w}/good.jsonl --db {db} --out {w}/plain_file --steps 1",
        ["plain_file"],
    ),
    (
        "train-missing-rationales",
        "train --student {model} --task {w}/good.jsonl --db {db} --out {w}/new "
        "--objective rationale --rationales {w}/nope.jsonl",
        ["nope.jsonl"],
    ),
    # rationales, loss, report
    (
        "import-empty",
        "rationales import {w}/rationales_empty.jsonl --task {w}/good.jsonl --db {db}",
        ["rationales_empty.jsonl"],
    ),
    (
        "import-conflict",
        "rationales import {w}/rationales_conflict.jsonl --task {w}/good.jsonl --db {db}",
        ["rationales_conflict.jsonl", "line 2"],
    ),
    (
        "import-unknown-id",
        "rationales import {w}/rationales_unknown_id.jsonl --task {w}/good.jsonl --db {db}",
        ["rationales_unknown_id.jsonl", "zzz"],
    ),
    ("loss-missing-corpus", "loss --model {model} --corpus {w}/nope.txt --db {db}", ["nope.txt"]),
    ("loss-binary-corpus", "loss --model {model} --corpus {w}/corpus_binary.bin --db {db}", ["corpus_binary.bin"]),
    ("report-broken-study", "report --study {w}/study_broken.json --out {w}/report", ["study_broken.json", "runs"]),
    ("report-missing-study", "report --study {w}/nope.json --out {w}/report", ["nope.json"]),
    # run
    ("run-missing", "run {w}/nope.yaml --db {db} --check", ["nope.yaml"]),
    ("run-bad-yaml", "run {w}/bad.yaml --db {db} --check", ["bad.yaml", "line"]),
    ("run-not-a-mapping", "run {w}/not_a_mapping.yaml --db {db} --check", ["not_a_mapping.yaml"]),
    ("run-keep-every-0", "run {w}/x_every0.yaml --db {db} --check", ["x_every0.yaml", "every:0"]),
    ("run-strategy", "run {w}/x_strategy.yaml --db {db} --check", ["x_strategy.yaml", "magic"]),
    ("run-task", "run {w}/x_task.yaml --db {db} --check", ["x_task.yaml", "arc_hard"]),
    ("run-split", "run {w}/x_split.yaml --db {db} --check", ["x_split.yaml", "tst"]),
    ("run-empty-seeds", "run {w}/x_seeds.yaml --db {db} --check", ["x_seeds.yaml", "seeds"]),
    ("run-name-escapes", "run {w}/x_name.yaml --db {db} --check", ["x_name.yaml", "name"]),
    ("run-name-absolute", "run {w}/x_absolute.yaml --db {db} --check", ["x_absolute.yaml", "name"]),
    ("run-unknown-key", "run {w}/x_unknown_key.yaml --db {db} --check", ["x_unknown_key.yaml", "trainin"]),
    ("run-override-index", "run {w}/x_ok.yaml --db {db} --check teachers.5.k_shots=3", ["teachers.5.k_shots"]),
    ("run-override-scalar", "run {w}/x_ok.yaml --db {db} --check name.x=1", ["name.x"]),
    ("run-override-yaml", "run {w}/x_ok.yaml --db {db} --check training.steps=[1,", ["training.steps"]),
    ("run-db-not-sqlite", "run {w}/x_ok.yaml --db {w}/not_a_db.sqlite --check", ["not_a_db.sqlite"]),
    ("run-db-is-a-folder", "run {w}/x_ok.yaml --db {w}/out --check", ["out", "folder"]),
    ("teach-db-is-a-folder", "teach --teacher {model} --task {w}/good.jsonl --db {w}/out", ["out", "folder"]),
    ("run-out-is-a-file", "run {w}/x_ok.yaml --db {db} --check --out {w}/plain_file/study", ["plain_file"]),
    # serve
    ("serve-missing-model", "serve {w}/no_such_model", ["no_such_model"]),
    ("serve-key-unset", "serve {model} --api-key-env TINYSTUDENT_UNSET_KEY", ["TINYSTUDENT_UNSET_KEY"]),
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (name and content hash), with the database's WAL side files."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture()
def workspace(tmp_path, tiny_causal, monkeypatch):
    w = tmp_path / "w"
    for name, content in {**FILES, **EXPERIMENTS}.items():
        path = w / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{w}", str(w)).replace("{model}", str(tiny_causal)), encoding="utf-8")
    with Store(w / "existing.sqlite") as store:
        store.save_run("train:earlier", "train", "done", {"label": "last week"}, {"acc": 0.5}, "earlier")
    monkeypatch.chdir(w)
    monkeypatch.setenv("TINYSTUDENT_DB", str(w / "default.sqlite"))
    return w


def test_there_are_at_least_forty_cases_over_every_command():
    commands = {args.split()[0] for _, args, _ in CASES}
    assert len(CASES) >= 40 and {"eval", "teach", "train", "rationales", "loss", "report", "run", "serve"} <= commands


@pytest.mark.parametrize("case, args, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(workspace, tiny_causal, case, args, words):
    argv = args.format(w=workspace, model=tiny_causal, db=workspace / "existing.sqlite").split()
    before = snapshot(workspace)
    result = CliRunner().invoke(app, argv)
    output = result.output
    assert result.exit_code not in (0, None), f"{case} was accepted:\n{output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case} raised {type(result.exception).__name__}: {result.exception}"
    )
    assert "Traceback" not in output, output
    flat = " ".join(output.split())
    for word in words:
        assert word in flat, f"{case}: {word!r} not in the message:\n{output}"
    assert snapshot(workspace) == before, f"{case} changed the workspace"


@pytest.mark.parametrize(
    "error,words",
    [
        (
            OSError(28, "No space left on device", "/data/out/model.safetensors"),
            "the disk is full (/data/out/model.safetensors)",
        ),
        (RuntimeError("Error while serializing: IoError(No space left on device)"), "the disk is full"),
        (
            type("SafetensorError", (Exception,), {})("Error while serializing: No space left on device"),
            "the disk is full",
        ),
        (
            PermissionError(13, "Permission denied", "/home/u/.cache/tinystudent"),
            "cannot write (/home/u/.cache/tinystudent)",
        ),
    ],
)
def test_a_full_disk_or_an_unwritable_folder_is_one_line_naming_the_path(error, words, capsys):
    """Issue 27, item 15: a full disk while saving (SQLite's, safetensors') and an unwritable cache
    folder are one line with the path and the way out, not a traceback."""
    import typer

    from tinystudent.commands.app import friendly_errors

    @friendly_errors
    def command():
        raise error

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 2
    said = " ".join(capsys.readouterr().err.split())
    assert words in said and "Traceback" not in said


def test_another_os_error_is_not_hidden():
    from tinystudent.commands.app import friendly_errors

    @friendly_errors
    def command():
        raise ConnectionResetError(104, "Connection reset by peer")

    with pytest.raises(ConnectionResetError):
        command()
