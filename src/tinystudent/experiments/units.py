"""Resumable units of work: each is keyed by a hash of everything it depends on.

A unit whose key is recorded as `done` in the store is skipped and its stored result returned,
so a killed experiment picks up where it stopped and a changed config reruns only the units
whose inputs changed. Each unit writes one log file. Evaluations run in a fresh process
(`evaluate_in_subprocess`), so the memory they measure is the model's alone.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tinystudent.folders import refuse_links
from tinystudent.hashing import stable_hash
from tinystudent.log import info, quiet_libraries
from tinystudent.redact import redact
from tinystudent.store import Store
from tinystudent.tasks import load_task


def unit_key(kind: str, payload: dict) -> str:
    """`kind:hash`: the key a unit's result is stored under."""
    return f"{kind}:{stable_hash(payload)}"


def unit_log(log_dir: Path, key: str) -> Path:
    """The log file of the unit stored under `key` (`kind-hash.log`): refused (`LinkedPathError`)
    when it or the log folder is a symbolic link, which would have the log written elsewhere."""
    return refuse_links(log_dir / f"{key.replace(':', '-', 1)}.log", log_dir.parent)


@dataclass(frozen=True)
class UnitSpec:
    """One unit of a study, self-contained: what it is, what it depends on, what it needs first.

    Attributes:
        kind: `teacher_eval`, `teach`, `import`, `cut`, `recover`, `student`, `student_eval`,
            `train`, `debate`, `ensemble` or `mutual`.
        name: a readable name for logs and tables (the label of its row in the study).
        payload: everything its result depends on; its hash is the key.
        needs: keys of the units whose results its work reads (they run first).
        args: what its work needs besides the payload (names, keys of the units it reads, the
            fields its row in the study adds); not part of the key.
        key: `kind:hash of payload`, the key its result is stored under.
    """

    kind: str
    name: str
    payload: dict
    needs: tuple[str, ...] = ()
    args: dict = field(default_factory=dict)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", tuple(self.needs))
        object.__setattr__(self, "key", unit_key(self.kind, self.payload))


@dataclass
class UnitRunner:
    """Runs units against the store, counting what was done and what was skipped."""

    store: Store
    experiment: str
    log_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    computed_keys: set[str] = field(default_factory=set)

    def key(self, kind: str, payload: dict) -> str:
        return unit_key(kind, payload)

    def run(self, kind: str, label: str, payload: dict, work: Callable[[], dict]) -> dict:
        """Return the stored result of this unit, or compute, store and return it.

        Args:
            kind: what the unit is (`teacher_eval`, `train`, ...).
            label: a readable name for logs and tables.
            payload: everything the result depends on; its hash is the unit's key.
            work: computes the result; it may write to the unit's log (`unit_log`).
        """
        stored = self.stored(kind, label, payload)
        if stored is not None:
            return stored
        started = self.begin(kind, label, payload)
        try:
            result = work()
        except BaseException:
            self.failed(kind, label, payload, traceback.format_exc())
            raise
        return self.finish(kind, label, payload, result, started)

    def stored(self, kind: str, label: str, payload: dict) -> dict | None:
        """The unit's stored result when it is done (counted as read back), else None."""
        key = self.key(kind, payload)
        stored = self.store.run(key)
        if not (stored and stored["status"] == "done"):
            return None
        if key not in self.computed_keys:  # not one this run has just computed for another use
            self.skipped.append(label)
            info(f"[dim]done earlier:[/dim] {label}")
        return stored["result"]

    def begin(self, kind: str, label: str, payload: dict) -> float:
        """Record the unit as running and open its log; returns when it started."""
        key = self.key(kind, payload)
        log_path = unit_log(self.log_dir, key)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.store.save_run(key, kind, "running", {"label": label, **payload}, None, self.experiment)
        info(f"[bold]{kind}[/bold] {label} (log: {log_path})")
        with log_path.open("a") as log:
            log.write(f"== {label} ({key}) started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            log.write(redact(json.dumps(payload, indent=1, default=str)) + "\n")  # a password in a URL, say
        return time.time()

    def failed(self, kind: str, label: str, payload: dict, error: str) -> None:
        """Record the unit as failed, `error` (a traceback) in its log."""
        key = self.key(kind, payload)
        with unit_log(self.log_dir, key).open("a") as log:
            log.write(redact(error))
        self.store.save_run(key, kind, "failed", {"label": label, **payload}, None, self.experiment)

    def finish(self, kind: str, label: str, payload: dict, result: dict, started: float) -> dict:
        """Store a computed result with its key, label, time and log; returns it."""
        key = self.key(kind, payload)
        log_path = unit_log(self.log_dir, key)
        result = {
            **result,
            "label": label,
            "run_key": key,
            "seconds": round(time.time() - started, 1),
            "log": str(log_path),
        }
        with log_path.open("a") as log:
            log.write(redact(json.dumps(result, indent=1, default=str)) + "\n== done\n")
        self.store.save_run(key, kind, "done", {"label": label, **payload}, result, self.experiment)
        self.done.append(label)
        self.computed_keys.add(key)
        info(
            f"finished {label} in {result['seconds']} s"
            + (f": acc {result['acc']:.3f}" if isinstance(result.get("acc"), float) else "")
        )
        return result


@dataclass(frozen=True, kw_only=True)
class EvalRequest:
    """One evaluation of a model on a split (what `tinystudent eval` takes), filed under `run_key`."""

    model: str
    task: str
    split: str
    limit: int | None
    seed: int
    db: str
    batch_size: int = 16
    device: str = "auto"
    mode: str = "loglikelihood"
    num_fewshot: int = 0
    max_input_tokens: int | None = None
    run_key: str | None = None
    evidence: str = "cut"
    samples: int = 1  # self_consistency: answers sampled per question


def evaluate_in_subprocess(request: EvalRequest, log_path: Path) -> dict:
    """`request` evaluated in a fresh process, so peak memory belongs to this model alone.

    The child is started with multiprocessing's "spawn" (a new interpreter, nothing inherited but
    the arguments), writes its log to `log_path`, dies with this process, and stores its
    evaluation under `run_key`, replacing any an earlier, killed attempt at the same unit left,
    so the store holds one result per unit. Returns the evaluation's summary (as `tinystudent
    eval --json` prints it); a failed child is a RuntimeError with the end of its log."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    with log_path.open("a") as log:
        log.write(redact(f"$ evaluate {request}") + "\n")
    child = context.Process(target=_evaluation_child, args=(request, str(log_path), os.getpid(), send))
    child.start()
    send.close()  # the child holds the only sending end: it closing (exit, crash) ends recv
    try:
        summary = receive.recv()
    except EOFError:
        summary = None
    except BaseException:  # stopped from outside (a preemption, Ctrl-C): the child goes too
        child.kill()
        raise
    finally:
        receive.close()
        child.join()
    if child.exitcode != 0 or summary is None:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        raise RuntimeError(f"evaluating {request.model} failed (see {log_path}): {' | '.join(lines[-3:])}")
    return summary


def _evaluation_child(request: EvalRequest, log_path: str, parent: int, send) -> None:
    """The spawned child's entry: die with the parent, log to the unit's log, evaluate, send back."""
    die_with_parent(parent)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        summary = evaluate_and_store(request)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    send.send(json.loads(json.dumps(summary, default=str)))  # the shape `eval --json` prints
    send.close()


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so a killed `run` leaves no
    evaluation behind to write into the store after it. Elsewhere nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def evaluate_and_store(request: EvalRequest) -> dict:
    """Evaluate `request.model` on its split and store the result: what `tinystudent eval` does."""
    from tinystudent.evaluation.evaluate import Sampling
    from tinystudent.evaluation.save import evaluate_and_save

    quiet_libraries()
    data = load_task(request.task, seed=request.seed)
    return evaluate_and_save(
        data,
        request.model,
        request.task,
        request.split,
        Path(request.db),
        limit=request.limit,
        seed=request.seed,
        mode=request.mode,
        batch_size=request.batch_size,
        max_input_tokens=request.max_input_tokens,
        num_fewshot=request.num_fewshot,
        evidence=request.evidence,
        sampling=Sampling(request.samples) if request.mode == "self_consistency" else None,
        run_key=request.run_key,
        device=request.device,
    )
