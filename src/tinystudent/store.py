"""One SQLite database for every number tinystudent measures.

Tables: `evaluations` (one row per evaluation, with its resolved settings, versions and data
hash), `predictions` (every per-question answer and choice log-likelihoods), `teacher_outputs`
(the teacher cache, keyed by everything that determines an output), `runs` (training and
experiment runs, keyed by their config hash) and `model_losses` (bits per byte of a model on a
reference text, keyed by the model's identity and the text's SHA-256; `stride` -1 = the default;
`model_loss_progress` holds the running sum of a measurement still under way, so a killed one
resumes) and `teacher_logits` (a teacher's top-k log-probabilities of one training sequence, a
compressed blob: `distill.stored_logits`). WAL mode lets several processes write at once;
each write is one transaction, so a killed process loses at most the row it was writing.

Every open checks the file first and refuses, with the file, what is wrong and the way out, one
that is not a regular file, damaged (`PRAGMA quick_check`), another program's SQLite database
(tinystudent's own carry `APPLICATION_ID`, or its tables from before the mark), or read-only when
results are to be written. A read (`Store(path, read_only=True)`) changes nothing: it opens the
file read-only and refuses one that does not exist; only a write creates the schema and the WAL.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import sqlite3
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import tinystudent
from tinystudent.folders import check_output_folder
from tinystudent.redact import redact

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    model_identity TEXT,
    task TEXT NOT NULL,
    split TEXT NOT NULL,
    mode TEXT NOT NULL,
    n INTEGER NOT NULL,
    acc REAL NOT NULL,
    acc_norm REAL,
    ci_low REAL,
    ci_high REAL,
    majority_baseline REAL,
    data_hash TEXT NOT NULL,
    run_key TEXT,
    cost TEXT NOT NULL,
    settings TEXT NOT NULL,
    versions TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS evaluations_one_per_unit ON evaluations(run_key) WHERE run_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS predictions (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
    example_id TEXT NOT NULL,
    gold NOT NULL,
    pred,
    pred_norm,
    correct INTEGER NOT NULL,
    choice_logprobs TEXT,
    text TEXT,
    PRIMARY KEY (evaluation_id, example_id)
);
CREATE TABLE IF NOT EXISTS teacher_outputs (
    cache_key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    teacher TEXT NOT NULL,
    task TEXT,
    example_id TEXT NOT NULL,
    strategy TEXT NOT NULL,
    prompt TEXT,
    text TEXT,
    answer INTEGER,
    choice_logprobs TEXT,
    matches_gold INTEGER,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS teacher_outputs_by_teacher ON teacher_outputs(teacher, task, strategy);
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    experiment TEXT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS model_losses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    model_identity TEXT NOT NULL,
    corpus TEXT NOT NULL,
    corpus_sha256 TEXT NOT NULL,
    window INTEGER NOT NULL,
    stride INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    nll_bits REAL NOT NULL,
    bits_per_byte REAL NOT NULL,
    settings TEXT NOT NULL,
    versions TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS model_losses_by_key ON model_losses(model_identity, corpus_sha256);
CREATE TABLE IF NOT EXISTS model_loss_progress (
    progress_key TEXT PRIMARY KEY,
    updated REAL NOT NULL,
    windows_done INTEGER NOT NULL,
    windows_total INTEGER NOT NULL,
    nll_nats REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS teacher_logits (
    logits_key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    teacher TEXT NOT NULL,
    top_k INTEGER NOT NULL,
    kd_vocab INTEGER,
    dtype TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    blob BLOB NOT NULL
);
"""


APPLICATION_ID = 0x74537475  # "tStu" in the SQLite header: a results database tinystudent made
OWN_TABLES = {"evaluations", "predictions", "teacher_outputs", "runs"}  # since the first version


def default_db_path() -> Path:
    """`$TINYSTUDENT_DB`, else `tinystudent-results/results.sqlite` in the working folder."""
    return Path(os.environ.get("TINYSTUDENT_DB", "tinystudent-results/results.sqlite"))


def versions() -> dict:
    """Versions of the packages that shape a result."""

    found = {"tinystudent": tinystudent.__version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return found


LOCK_TIMEOUT_S = 60.0


def _prepare(db: sqlite3.Connection, journal: str = "wal") -> None:
    """The journal mode and the schema. SQLite answers "database is locked" at once, without
    waiting on its busy timeout, when two connections switch a new file to WAL together; so retry
    until the timeout instead of failing the second writer."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != journal:
                db.execute(f"PRAGMA journal_mode={journal.upper()}")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            # The mark first: another connection opening the file while the tables are being made
            # then sees a tinystudent database, not another program's tables.
            if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.executescript(SCHEMA)
            _untyped_answers(db)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# Answers are a choice's index (an integer) or a free-form answer's text ("18", "1.5"): the
# columns that hold them have no declared type, so SQLite keeps each value as it was given.
# Databases from before free-form tasks declared them INTEGER, whose affinity turns the text
# "18" into the number 18; they are rebuilt once, their rows kept.
ANSWER_COLUMNS = ("gold", "pred", "pred_norm")


def _untyped_answers(db: sqlite3.Connection) -> None:
    """Rebuild an older `predictions` table whose answer columns are typed INTEGER (one
    transaction: a killed rebuild leaves the old table as it was)."""
    if not _typed_answers(db):
        return
    created = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS predictions") :].split(";")[0]
    db.execute("BEGIN IMMEDIATE")
    try:
        if _typed_answers(db):  # another process may have rebuilt it while we waited
            db.execute(created.replace("IF NOT EXISTS predictions", "predictions_untyped"))
            db.execute("INSERT INTO predictions_untyped SELECT * FROM predictions")
            db.execute("DROP TABLE predictions")
            db.execute("ALTER TABLE predictions_untyped RENAME TO predictions")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _typed_answers(db: sqlite3.Connection) -> bool:
    declared = {row[1]: row[2] for row in db.execute("PRAGMA table_info(predictions)")}
    return any(declared.get(column, "") != "" for column in ANSWER_COLUMNS)


class Store:
    """A connection to the results database. Use as a context manager or call `close()`.

    `journal="delete"` is for a database on a network file system, which has none of the shared
    memory WAL mode needs; such a file must be opened by one process at a time
    (`experiments.executors.unit_store`). `read_only=True` is for a command that only reads: the
    file must exist and is opened read-only. `check=False` skips the `quick_check` of every page
    (about a second a GB once cached) where this process's parent has just checked the file."""

    def __init__(
        self,
        path: str | Path | None = None,
        journal: Literal["wal", "delete"] = "wal",
        *,
        read_only: bool = False,
        check: bool = True,
    ):
        self.path = Path(path) if path else default_db_path()
        exists = _check_file(self.path, writing=not read_only)
        try:
            if exists:
                _inspect(self.path, writing=not read_only, integrity=check)
            if read_only:
                self.db = _connect(self.path, read_only=True)
                self.db.execute("PRAGMA foreign_keys=ON")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = _connect(self.path)
                _prepare(self.db, journal)
        except sqlite3.DatabaseError as err:  # also OperationalError: cannot open, read-only, full
            raise ValueError(_explain(self.path, err)) from None
        except FileNotFoundError:
            raise  # an empty file for a read: `_look`'s message
        except OSError as err:
            raise ValueError(f"{self.path}: cannot create the results database there ({err.strerror})") from None

    @staticmethod
    def check_path(path: str | Path | None = None) -> Path:
        """Refuse a database path `Store` would refuse for writing, without creating or changing
        anything (a database that is there is read, and checked, read-only)."""

        path = Path(path) if path else default_db_path()
        if _check_file(path, writing=True):
            try:
                _inspect(path, writing=False, integrity=True)
            except sqlite3.DatabaseError as err:
                raise ValueError(_explain(path, err)) from None
        return path

    @staticmethod
    def existing(path: str | Path | None = None) -> Store | None:
        """The database at `path` opened read-only and checked, or None when there is none yet
        (no file, or an empty one); nothing is created or changed."""

        path = Path(path) if path else default_db_path()
        if not path.exists() or (path.is_file() and path.stat().st_size == 0):
            Store.check_path(path)  # a folder a database can be made in later
            return None
        return Store(path, read_only=True)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:  # SQLite has rolled back already on a full disk
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as err:
            if not _writing_refused(err):
                raise
            raise ValueError(_explain(self.path, err)) from None

    @contextmanager
    def study_lock(self, study: str):
        """Hold the lock of `study` on this database while the block runs: a second `run` of it
        here is refused with the pid holding it. The lock is an `fcntl.flock` on a file beside the
        database, so it goes with its process, however that ends (kill -9 too)."""

        name = re.sub(r"[^A-Za-z0-9_.-]", "_", study)
        lock = self.path.with_name(f"{self.path.name}.{name}.lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise ValueError(f"{lock}: cannot open the lock of study {study} ({err.strerror})") from None
        with os.fdopen(fd, "r+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = handle.read().strip() or "?"
                raise RuntimeError(
                    f"study {study} is already running on {self.path} (pid {pid}); wait for it to "
                    "end or stop it, then run again (it resumes where the other left off)"
                ) from None
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- evaluations -----------------------------------------------------------------------

    def save_evaluation(self, result, run_key: str | None = None) -> int:
        """Store an `EvalResult` and its predictions in one transaction; returns its id.

        `run_key` names the unit the evaluation belongs to: one unit has one evaluation, so one an
        earlier attempt stored (killed before it was marked done) is replaced, never kept beside."""
        with self.transaction() as db:
            if run_key is not None:
                db.execute("DELETE FROM evaluations WHERE run_key = ?", (run_key,))
            cursor = db.execute(
                "INSERT INTO evaluations (created, model, model_identity, task, split, mode, n, acc,"
                " acc_norm, ci_low, ci_high, majority_baseline, data_hash, run_key, cost, settings,"
                " versions) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    time.time(),
                    result.model,
                    result.settings.get("model_identity"),
                    result.task,
                    result.split,
                    result.mode,
                    result.n,
                    result.acc,
                    result.acc_norm,
                    result.ci95[0],
                    result.ci95[1],
                    result.majority_baseline,
                    result.data_hash,
                    run_key,
                    json.dumps(result.cost),
                    json.dumps(result.settings, default=str),
                    json.dumps(versions()),
                ),
            )
            evaluation_id = cursor.lastrowid
            db.executemany(
                "INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        evaluation_id,
                        p.example_id,
                        p.gold,
                        p.pred,
                        p.pred_norm,
                        int(p.correct),
                        json.dumps(p.choice_logprobs) if p.choice_logprobs is not None else None,
                        p.text,
                    )
                    for p in result.predictions
                ],
            )
        return evaluation_id

    def evaluation(self, evaluation_id: int) -> dict:
        row = self.db.execute("SELECT * FROM evaluations WHERE id = ?", (evaluation_id,)).fetchone()
        if row is None:
            raise KeyError(f"no evaluation {evaluation_id} in {self.path}")
        return _decode(dict(row))

    def predictions(self, evaluation_id: int) -> list[dict]:
        rows = self.db.execute(
            "SELECT * FROM predictions WHERE evaluation_id = ? ORDER BY rowid", (evaluation_id,)
        ).fetchall()
        return [dict(r) for r in rows]

    def evaluations(self, **where) -> list[dict]:
        clause = " AND ".join(f"{k} = ?" for k in where) or "1"
        rows = self.db.execute(
            f"SELECT * FROM evaluations WHERE {clause} ORDER BY id", tuple(where.values())
        ).fetchall()
        return [_decode(dict(r)) for r in rows]

    # --- runs ------------------------------------------------------------------------------

    def run(self, run_key: str) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE run_key = ?", (run_key,)).fetchone()
        return _decode(dict(row)) if row else None

    def unit_seconds(self) -> dict[str, list[float]]:
        """Seconds each finished unit took, by unit kind (every experiment in the database)."""
        found: dict[str, list[float]] = {}
        for row in self.db.execute("SELECT kind, result FROM runs WHERE status = 'done' AND result IS NOT NULL"):
            seconds = json.loads(row["result"]).get("seconds")
            if isinstance(seconds, (int, float)):
                found.setdefault(row["kind"], []).append(float(seconds))
        return found

    def save_run(
        self,
        run_key: str,
        kind: str,
        status: str,
        config: dict,
        result: dict | None = None,
        experiment: str | None = None,
    ) -> None:
        """Record a unit's row; its config and result pass through `redact` first, so no key or
        password (a teacher's `http://user:password@host` URL) is written to the database."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (run_key, created, experiment, kind, status, config, result)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT(run_key) DO UPDATE SET status=excluded.status,"
                " result=excluded.result, config=excluded.config",
                (
                    run_key,
                    time.time(),
                    experiment,
                    kind,
                    status,
                    redact(json.dumps(config, default=str)),  # a password in a teacher's URL, say
                    redact(json.dumps(result, default=str)) if result is not None else None,
                ),
            )

    # --- model losses (bits per byte) -------------------------------------------------------

    def save_model_loss(self, row: dict, done_progress_key: str | None = None) -> int:
        """Store one bits-per-byte measurement (keys as the `model_losses` columns); returns its
        id. `done_progress_key`: the progress row of this measurement, deleted in the same
        transaction."""
        with self.transaction() as db:
            if done_progress_key is not None:
                db.execute("DELETE FROM model_loss_progress WHERE progress_key = ?", (done_progress_key,))
            cursor = db.execute(
                "INSERT INTO model_losses (created, model, model_identity, corpus, corpus_sha256,"
                " window, stride, dtype, bytes, tokens, nll_bits, bits_per_byte, settings, versions)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    time.time(),
                    row["model"],
                    row["model_identity"],
                    row["corpus"],
                    row["corpus_sha256"],
                    row["window"],
                    row["stride"],
                    row["dtype"],
                    row["bytes"],
                    row["tokens"],
                    row["nll_bits"],
                    row["bits_per_byte"],
                    json.dumps(row.get("settings", {}), default=str),
                    json.dumps(versions()),
                ),
            )
        return cursor.lastrowid

    def save_loss_progress(self, progress_key: str, windows_done: int, windows_total: int, nll_nats: float) -> None:
        """Remember how far a bits-per-byte measurement got (its windows done and their NLL)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO model_loss_progress VALUES (?,?,?,?,?) ON CONFLICT(progress_key) DO"
                " UPDATE SET updated=excluded.updated, windows_done=excluded.windows_done,"
                " windows_total=excluded.windows_total, nll_nats=excluded.nll_nats",
                (progress_key, time.time(), windows_done, windows_total, nll_nats),
            )

    def loss_progress(self, progress_key: str) -> tuple[int, float] | None:
        """(windows done, their NLL in nats) of an unfinished measurement, or None."""
        row = self.db.execute(
            "SELECT windows_done, nll_nats FROM model_loss_progress WHERE progress_key = ?", (progress_key,)
        ).fetchone()
        return (row["windows_done"], row["nll_nats"]) if row else None

    def model_loss(self, loss_id: int) -> dict:
        row = self.db.execute("SELECT * FROM model_losses WHERE id = ?", (loss_id,)).fetchone()
        if row is None:
            raise KeyError(f"no model loss {loss_id} in {self.path}")
        return _decode(dict(row))

    def model_losses(self, **where) -> list[dict]:
        """Stored bits-per-byte rows matching every `column=value` given, oldest first."""
        clause = " AND ".join(f"{k} = ?" for k in where) or "1"
        rows = self.db.execute(
            f"SELECT * FROM model_losses WHERE {clause} ORDER BY id", tuple(where.values())
        ).fetchall()
        return [_decode(dict(r)) for r in rows]

    # --- stored teacher logits (distill.stored_logits) ---------------------------------------

    def save_teacher_logits(self, rows: list[tuple]) -> None:
        """Store rows of (logits_key, teacher, top_k, kd_vocab, dtype, tokens, blob) in one
        transaction; a key already stored keeps its row."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO teacher_logits (logits_key, created, teacher, top_k, kd_vocab, dtype,"
                " tokens, blob) VALUES (?,?,?,?,?,?,?,?)",
                [(key, now, *rest) for key, *rest in rows],
            )

    def rows_by_key(self, table: str, key_column: str, keys: list[str], columns: str = "*"):
        """The rows of `table` whose `key_column` is one of `keys` (those stored), queried 500
        keys at a time, below SQLite's limit on parameters. Table and column names are ours,
        never a user's."""
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            yield from self.db.execute(f"SELECT {columns} FROM {table} WHERE {key_column} IN ({marks})", part)

    def teacher_logit_keys(self, keys: list[str]) -> set[str]:
        """Which of `keys` have stored teacher logits."""
        return {row[0] for row in self.rows_by_key("teacher_logits", "logits_key", keys, "logits_key")}

    def teacher_logits(self, keys: list[str]) -> dict[str, dict]:
        """The stored rows of `keys` (those stored), by key."""
        return {row["logits_key"]: dict(row) for row in self.rows_by_key("teacher_logits", "logits_key", keys)}

    def teacher_logits_size(self, teacher: str | None = None) -> tuple[int, int]:
        """(stored blob bytes, target tokens) over the teacher_logits rows (of one teacher identity)."""
        clause, args = ("WHERE teacher = ?", (teacher,)) if teacher is not None else ("", ())
        row = self.db.execute(
            f"SELECT COALESCE(SUM(LENGTH(blob)), 0), COALESCE(SUM(tokens), 0) FROM teacher_logits {clause}", args
        ).fetchone()
        return int(row[0]), int(row[1])


def _decode(row: dict) -> dict:
    for key in ("cost", "settings", "versions", "config", "result", "meta"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row


def _connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    """A connection to `path`; `read_only`: one that writes nothing to it. While a WAL file is
    beside the database (another process has it open, or one was killed) that is SQLite's
    read-only mode, which never checkpoints; else a connection that may not write (`query_only`),
    so that closing it removes the `-wal` and `-shm` files its reads made, as a read-only one
    would not, and there is nothing in them to checkpoint."""
    if read_only and Path(f"{path}-wal").exists():
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=LOCK_TIMEOUT_S)
    else:
        db = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        if read_only:
            db.execute("PRAGMA query_only=ON")
    db.row_factory = sqlite3.Row
    return db


def _check_file(path: Path, writing: bool) -> bool:
    """Whether a database is at `path`, after refusing what cannot be one: a folder, a FIFO or
    other file that is not a regular one (never opened: reading a FIFO waits for a writer), a file
    that is not SQLite, a missing file for a read, or what cannot be written for a write."""

    if path.is_dir():
        raise ValueError(f"{path}: is a folder; the results database is a file (--db results.sqlite)")
    if not path.exists():
        if not writing:
            raise FileNotFoundError(
                f"{path}: no results database here; run `tinystudent run` first, or give --db the database it wrote"
            )
        check_output_folder(path.parent, "--db's folder")
        return False
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ValueError(f"{path}: is {kind}, not a regular file; the results database is a file (--db results.sqlite)")
    try:
        with path.open("rb") as handle:
            header = handle.read(16)
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror}); give --db a database you can read") from None
    if header and header != b"SQLite format 3\x00":
        raise ValueError(
            f"{path}: cannot be used as the results database (file is not a database); give --db a new "
            "file or an SQLite database tinystudent wrote"
        )
    if writing:
        folder = path.parent
        if not os.access(path, os.W_OK):
            raise ValueError(
                f"{path}: cannot be written to (the file is read-only), so results cannot be stored in it; "
                f"make it writable (chmod u+w {path}) or give --db another file"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(
                f"{folder}: cannot be written to, so the results database {path} in it cannot be written "
                "(SQLite keeps its journal beside it); make the folder writable or give --db a file elsewhere"
            )
    return True


def _inspect(path: Path, writing: bool, integrity: bool) -> None:
    """Refuse the database at `path` when it is damaged (`integrity`: `PRAGMA quick_check` reads
    every page), another program's, or (for a read) empty. It is looked at read-only, so nothing is
    written, not even a WAL checkpoint; only when SQLite cannot read it so (a journal a killed
    writer left, which only a writer may roll back) does a writer look, and write nothing before."""

    try:
        _look(_connect(path, read_only=True), path, writing, integrity)
    except sqlite3.OperationalError:
        if not writing:
            raise
        _look(_connect(path), path, writing, integrity)


def _look(db: sqlite3.Connection, path: Path, writing: bool, integrity: bool) -> None:
    try:
        try:
            if integrity:
                found = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
                if found != ["ok"]:
                    raise ValueError(_damaged(path, "; ".join(found)))
            mark = db.execute("PRAGMA application_id").fetchone()[0]
            objects = db.execute("SELECT type, name FROM sqlite_master").fetchall()
        except sqlite3.DatabaseError as err:
            if type(err) is sqlite3.OperationalError:
                raise  # could not read it (locked, a journal to roll back): not a verdict on the file
            raise ValueError(_damaged(path, str(err))) from None  # malformed, not a database
    finally:
        db.close()
    tables = {name for kind, name in objects if kind == "table" and not name.startswith("sqlite_")}
    if mark == APPLICATION_ID or OWN_TABLES <= tables:
        return
    if mark == 0 and not objects:
        if writing:
            return  # an empty SQLite file: the schema goes into it
        raise FileNotFoundError(
            f"{path}: no results database here (the file is empty); run `tinystudent run` first, "
            "or give --db the database it wrote"
        )
    shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
    raise ValueError(
        f"{path}: is another program's SQLite database (tables: {shown or 'none'}), not a tinystudent "
        "results database, so it is left as it is; give --db a new file or one tinystudent wrote"
    )


def _damaged(path: Path, problem: str) -> str:
    return (
        f"{path}: the results database is damaged ({problem}); nothing was written to it. Recover "
        f'what it holds with `sqlite3 {path} ".recover" | sqlite3 recovered.sqlite` and give '
        "--db recovered.sqlite, or give --db a new file"
    )


def _writing_refused(err: sqlite3.Error) -> bool:
    text = str(err).lower()
    return "disk is full" in text or "readonly" in text or "read-only" in text


def _explain(path: Path, err: sqlite3.Error) -> str:
    """One line for an SQLite error on `path`, naming the fix."""
    text = str(err).lower()
    if "disk is full" in text:
        folder = path.resolve().parent
        return (
            f"{path}: the disk is full, so results could not be saved (SQLite: {err}); free space on "
            f"the disk that holds {folder} and run again (what was saved before is kept), or give "
            "--db a file on another disk"
        )
    if "readonly" in text or "read-only" in text:
        return (
            f"{path}: cannot be written to (SQLite: {err}); make the file and its folder writable, "
            "or give --db another file"
        )
    return (
        f"{path}: cannot be used as the results database ({err}); give --db a new file or an "
        "SQLite database tinystudent wrote, in a folder you can write to"
    )
