"""The results database as a careless or unlucky user gives it: damaged, missing, another
program's, read-only, locked by a run of the same study, on a full disk, or not a file at all.

Each case is one clear error that names the file and the way out, with no traceback, and leaves
every file as it was (the workspace is hashed before and after, the databases' `-wal` and `-shm`
side files included). The damaged and foreign databases are real SQLite files made here.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinystudent.cli import app
from tinystudent.store import APPLICATION_ID, Store

GOOD = [
    {"id": f"q{i}", "question": f"Is {i} even?", "choices": ["yes", "no"], "answer": "yes" if i % 2 == 0 else "no"}
    for i in range(12)
]

EXPERIMENT = """
name: ok
task: {{name: {w}/good.jsonl, test_split: test}}
teachers:
  - {{name: teach, model: {model}}}
students:
  - {{name: small, model: {model}, keep_layers: "first:1"}}
methods: {{finetune: [full], objectives: [answer]}}
seeds: [0]
"""

# (case id, command line with {w} = workspace, {model} = a real tiny model, {db} = the database)
COMMANDS = [
    ("run-plan", "run {w}/x_ok.yaml --plan --db {db}"),
    ("run-check", "run {w}/x_ok.yaml --check --db {db}"),
    ("run", "run {w}/x_ok.yaml --db {db}"),
    ("report", "report --experiment ok --db {db} --out {w}/report"),
    ("rationales-export", "rationales export {w}/out.jsonl --db {db}"),
    ("rationales-import", "rationales import {w}/rationales.jsonl --task {w}/good.jsonl --db {db}"),
    ("eval", "eval --model {model} --task {w}/good.jsonl --db {db}"),
]
READ_COMMANDS = [case for case in COMMANDS if case[0] in ("run-plan", "run-check", "report", "rationales-export")]


class Computed(Exception):
    """Raised where `run` would start computing the study's units."""


def jsonl(rows) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def fill(path: Path, rows: int = 400) -> None:
    """A tinystudent database of about 75 pages."""
    with Store(path) as store:
        for i in range(rows):
            store.save_run(f"train:{i}", "train", "done", {"label": "x" * 500}, {"acc": 0.5}, "earlier")


def damage(path: Path) -> None:
    """Overwrite one page in the middle of the file with garbage, as a bad disk sector would."""
    pages = path.stat().st_size // 4096
    with path.open("r+b") as handle:
        handle.seek(4096 * (pages // 2))
        handle.write(b"\xde\xad\xbe\xef" * 1024)


@pytest.fixture()
def workspace(tmp_path, tiny_causal, monkeypatch):
    w = tmp_path / "w"
    w.mkdir()
    (w / "good.jsonl").write_text(jsonl(GOOD), encoding="utf-8")
    (w / "x_ok.yaml").write_text(EXPERIMENT.format(w=w, model=tiny_causal), encoding="utf-8")
    (w / "rationales.jsonl").write_text(jsonl([{"id": "q0", "teacher": "t", "rationale": "0 is even"}]))
    fill(w / "good.sqlite", rows=3)
    fill(w / "damaged.sqlite")
    damage(w / "damaged.sqlite")
    with sqlite3.connect(w / "other.sqlite") as other:  # another program's file, rollback journal
        other.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        other.execute("INSERT INTO notes (text) VALUES ('mine')")
    other.close()
    monkeypatch.chdir(w)
    monkeypatch.setenv("TINYSTUDENT_DB", str(w / "default.sqlite"))
    return w


@pytest.fixture()
def no_computing(monkeypatch):
    """`run` raises `Computed` instead of computing any unit."""
    from tinystudent.experiments import runner

    def computed(*args, **kwargs):
        raise Computed("run_experiment was called")

    monkeypatch.setattr(runner, "run_experiment", computed)


def invoke(args: str, **values) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, args.format(**values).split())
    return result.exit_code, " ".join(result.output.split()), result.exception


def assert_refused(code: int, said: str, exception, words: list[str]) -> None:
    assert code not in (0, None), f"accepted:\n{said}"
    assert exception is None or isinstance(exception, SystemExit), f"{type(exception).__name__}: {exception}"
    assert "Traceback" not in said and "Error:" not in said.replace("error:", ""), said
    for word in words:
        assert word in said, f"{word!r} not in the message: {said}"


# --- item 1: a damaged database ---------------------------------------------------------------


def test_the_damaged_file_is_really_damaged(workspace):
    db = sqlite3.connect(workspace / "damaged.sqlite")
    try:
        found = [row[0] for row in db.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as err:
        found = [str(err)]
    db.close()
    assert found != ["ok"]


@pytest.mark.parametrize("case, args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_damaged_database_is_refused_and_left_as_it_is(workspace, tiny_causal, no_computing, case, args):
    before = snapshot(workspace)
    code, said, exception = invoke(args, w=workspace, model=tiny_causal, db=workspace / "damaged.sqlite")
    assert_refused(code, said, exception, ["damaged.sqlite", "damaged", ".recover", "--db"])
    assert snapshot(workspace) == before, f"{case} changed the workspace"


# --- item 2: a read command and a database that is not there -----------------------------------


@pytest.mark.parametrize(
    "args",
    [
        "report --experiment ok --db {w}/typo/results.sqlite --out {w}/report",
        "rationales export {w}/out.jsonl --db {w}/typo/results.sqlite",
        "report --experiment ok --out {w}/report",  # the default database ($TINYSTUDENT_DB)
        "rationales export {w}/out.jsonl",
    ],
    ids=["report", "rationales-export", "report-default-db", "rationales-export-default-db"],
)
def test_a_read_command_refuses_a_missing_database_and_creates_nothing(workspace, args):
    before = snapshot(workspace)
    code, said, exception = invoke(args, w=workspace)
    assert_refused(code, said, exception, ["no results database", "tinystudent run", "--db"])
    assert "typo" in said or "default.sqlite" in said
    assert snapshot(workspace) == before and not (workspace / "typo").exists()


@pytest.mark.parametrize("option", ["--plan", "--check"])
def test_plan_and_check_before_the_first_run_create_no_database(workspace, option):
    """Before a study has run there is no database to read: `--plan` and `--check` say what it
    will do and create nothing (no folder, no file)."""
    before = snapshot(workspace)
    code, said, exception = invoke(f"run {{w}}/x_ok.yaml {option} --db {{w}}/new/results.sqlite", w=workspace)
    assert code == 0, said
    assert snapshot(workspace) == before and not (workspace / "new").exists()


def test_an_export_that_finds_nothing_says_so_unless_told_otherwise(workspace):
    (workspace / "out.jsonl").write_text("last week's export\n")
    before = snapshot(workspace)
    code, said, exception = invoke("rationales export {w}/out.jsonl --db {w}/good.sqlite", w=workspace)
    assert_refused(code, said, exception, ["good.sqlite", "no cached rationales", "out.jsonl", "--allow-empty"])
    assert snapshot(workspace) == before
    code, said, _ = invoke("rationales export {w}/out.jsonl --db {w}/good.sqlite --task nope", w=workspace)
    assert code == 2 and "task nope" in said
    code, said, _ = invoke("rationales export {w}/empty.jsonl --db {w}/good.sqlite --allow-empty", w=workspace)
    assert code == 0 and (workspace / "empty.jsonl").read_text() == ""
    code, said, _ = invoke(
        "rationales import {w}/rationales.jsonl --task {w}/good.jsonl --db {w}/good.sqlite", w=workspace
    )
    assert code == 0, said
    code, said, _ = invoke("rationales export {w}/out.jsonl --db {w}/good.sqlite", w=workspace)
    assert code == 0 and "0 is even" in (workspace / "out.jsonl").read_text()


# --- item 14: another program's SQLite file -----------------------------------------------------


@pytest.mark.parametrize("case, args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_another_programs_database_is_refused_and_left_as_it_is(workspace, tiny_causal, no_computing, case, args):
    before = snapshot(workspace)
    code, said, exception = invoke(args, w=workspace, model=tiny_causal, db=workspace / "other.sqlite")
    assert_refused(code, said, exception, ["other.sqlite", "another program", "notes", "--db"])
    assert snapshot(workspace) == before, f"{case} changed the workspace"
    with sqlite3.connect(workspace / "other.sqlite") as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    other.close()


def test_tinystudent_knows_its_own_files(workspace, no_computing):
    """A new database carries tinystudent's application id; one written before the mark existed is
    known by its tables, and marked by the next command that writes, never by one that reads."""
    with Store(workspace / "new.sqlite"):
        pass
    mark = sqlite3.connect(workspace / "new.sqlite")
    assert mark.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    mark.close()
    old = workspace / "old.sqlite"
    shutil.copy(workspace / "good.sqlite", old)
    with sqlite3.connect(old) as db:
        db.execute("PRAGMA application_id=0")
    db.close()
    before = snapshot(workspace)
    for case, args in READ_COMMANDS:
        code, said, _ = invoke(args, w=workspace, db=old)
        assert "another program" not in said and "damaged" not in said, (case, said)
    assert snapshot(workspace) == before
    with Store(old) as store:
        assert store.run("train:1")["status"] == "done"
        assert store.db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    (workspace / "empty.sqlite").touch()  # an empty file: a new database for a write, none for a read
    code, said, _ = invoke("report --experiment ok --db {w}/empty.sqlite", w=workspace)
    assert code == 2 and "no results database" in said
    with Store(workspace / "empty.sqlite") as store:
        assert store.run("train:1") is None


# --- item 15: not a regular file ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case, args", [*READ_COMMANDS, COMMANDS[5]], ids=[c[0] for c in [*READ_COMMANDS, COMMANDS[5]]])
def test_a_fifo_is_refused_without_waiting_on_it(workspace, tiny_causal, case, args):
    fifo = workspace / "fifo.sqlite"
    os.mkfifo(fifo)
    argv = args.format(w=workspace, model=tiny_causal, db=fifo).split()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tinystudent", *argv], capture_output=True, text=True, timeout=60, cwd=workspace
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case} waited on the FIFO")
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert "fifo.sqlite" in said and "FIFO" in said and "not a regular file" in said


def test_a_device_is_refused(workspace):
    code, said, exception = invoke("run {w}/x_ok.yaml --check --db /dev/null", w=workspace)
    assert_refused(code, said, exception, ["/dev/null", "device", "not a regular file"])


# --- item 15: a full disk -----------------------------------------------------------------------


def test_a_full_disk_says_the_disk_is_full_and_keeps_what_was_saved(workspace):
    path = workspace / "good.sqlite"
    with Store(path) as store:
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count={pages}")  # SQLite answers SQLITE_FULL, as on a full disk
        with pytest.raises(ValueError) as refused:
            store.save_run("train:big", "train", "done", {"label": "y" * 200_000}, {"acc": 0.9}, "now")
        message = str(refused.value)
        assert "disk is full" in message and str(path) in message and str(path.resolve().parent) in message
        assert "free space" in message and "cannot be used" not in message
        assert store.run("train:big") is None and store.run("train:2")["status"] == "done"
        store.db.execute("PRAGMA max_page_count=1073741823")
        store.save_run("train:big", "train", "done", {"label": "y"}, {"acc": 0.9}, "now")  # space again: it saves
        assert store.run("train:big")["status"] == "done"


# --- item 13: two runs of one study ---------------------------------------------------------------

HOLD = """
import sys, time
from tinystudent.store import Store
store = Store(sys.argv[1])
with store.study_lock("ok"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_of_a_study_is_refused_while_the_first_holds_it(workspace, no_computing):
    db = workspace / "good.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = snapshot(workspace)
        code, said, exception = invoke("run {w}/x_ok.yaml --db {db}", w=workspace, db=db)
        assert_refused(code, said, exception, ["already running", f"(pid {holder.pid})", "good.sqlite"])
        assert snapshot(workspace) == before
        code, said, exception = invoke("run {w}/x_ok.yaml --db {db}", w=workspace, db=workspace / "another.sqlite")
        assert isinstance(exception, Computed), said  # another database: another lock
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, said, exception = invoke("run {w}/x_ok.yaml --db {db}", w=workspace, db=db)
    assert isinstance(exception, Computed), said  # kill -9 released it


# --- items 3 and 15: a read-only database, as a user who may not write it ------------------------


def _as_nobody():
    user = pwd.getpwnam("nobody")

    def become():
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return become


def _without_dac_override():
    """Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (dropped from the bounding set, so
    the command's own process has neither): the file modes bind it as they bind any user."""
    libc = ctypes.CDLL(None, use_errno=True)

    def drop():
        for capability in (1, 2):
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


@pytest.fixture()
def as_user(tiny_causal):
    """(a folder the other user may write in, a function running tinystudent as that user): a
    user who is not root; as root, `nobody` when it can run this Python, else root without the
    capabilities that let it write any file; else a skip with the reason."""
    folder = Path(tempfile.mkdtemp(prefix="tinystudent-readonly-"))
    folder.chmod(0o777)
    ways: list = [None] if os.geteuid() != 0 else []
    reasons = []
    if os.geteuid() == 0:
        try:
            ways.append(_as_nobody())
        except KeyError:
            reasons.append("there is no user `nobody`")
        if sys.platform.startswith("linux"):
            ways.append(_without_dac_override())
    env = {**os.environ, "HOME": str(folder), "OMP_NUM_THREADS": "1"}
    chosen = None
    for way in ways:
        try:
            probe = subprocess.run(
                [sys.executable, "-c", "import tinystudent.cli"], preexec_fn=way, env=env, cwd=folder,
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as err:
            reasons.append(f"{err}")
            continue
        if probe.returncode == 0:
            chosen = way
            break
        reasons.append((probe.stderr.strip().splitlines() or ["?"])[-1])
    if chosen is None and ways:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip("no user who may not write a read-only file can run this Python: " + "; ".join(reasons))
    model = folder / "model"
    shutil.copytree(tiny_causal, model)
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (folder / "good.jsonl").write_text(jsonl(GOOD), encoding="utf-8")
    (folder / "x_ok.yaml").write_text(EXPERIMENT.format(w=folder, model=model), encoding="utf-8")
    (folder / "rationales.jsonl").write_text(jsonl([{"id": "q0", "teacher": "t", "rationale": "0 is even"}]))

    def run(args: str) -> tuple[int, str]:
        argv = args.format(w=folder).split()
        done = subprocess.run(
            [sys.executable, "-m", "tinystudent", *argv], preexec_fn=chosen, env=env, cwd=folder,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        return done.returncode, " ".join((done.stdout + done.stderr).split())

    yield folder, run
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_a_read_only_database_is_refused_for_writing_and_read_for_reading(as_user):
    """The database is in WAL mode (as tinystudent leaves it) and holds a rationale; its folder is
    writable. A command that would write is refused on open, before any unit is read back; one
    that reads reads it."""
    folder, run = as_user
    db = folder / "ro.sqlite"
    code, said, _ = invoke("rationales import {w}/rationales.jsonl --task {w}/good.jsonl --db {db}", w=folder, db=db)
    assert code == 0, said
    fill(db, rows=3)
    db.chmod(0o444)
    for leftover in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        leftover.unlink(missing_ok=True)
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    check.close()
    content = db.read_bytes()
    for args in (
        "run {w}/x_ok.yaml --db {w}/ro.sqlite",
        "rationales import {w}/rationales.jsonl --task {w}/good.jsonl --db {w}/ro.sqlite",
        "run {w}/x_ok.yaml --check --db {w}/ro.sqlite",
    ):
        code, said = run(args)
        assert code == 2 and "Traceback" not in said and "OperationalError" not in said, said
        assert "ro.sqlite" in said and "read-only" in said and "chmod u+w" in said, said
    code, said = run("rationales export {w}/out.jsonl --db {w}/ro.sqlite")
    assert code == 0 and "0 is even" in (folder / "out.jsonl").read_text(), said
    code, said = run("run {w}/x_ok.yaml --plan --db {w}/ro.sqlite")
    assert code == 0 and "Traceback" not in said, said
    assert db.read_bytes() == content
