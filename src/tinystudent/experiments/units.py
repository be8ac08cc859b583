"""Resumable units of work: each is keyed by a hash of everything it depends on.

A unit whose key is recorded as `done` in the store is skipped and its stored result returned,
so a killed experiment picks up where it stopped and a changed config reruns only the units
whose inputs changed. Each unit writes one log file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tinystudent.hashing import stable_hash
from tinystudent.log import info
from tinystudent.store import Store


@dataclass
class UnitRunner:
    """Runs units against the store, counting what was done and what was skipped."""

    store: Store
    experiment: str
    log_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    computed_keys: set[str] = field(default_factory=set)
    current: str | None = None  # the key of the unit whose work is running: what it stores is filed under it

    def key(self, kind: str, payload: dict) -> str:
        return f"{kind}:{stable_hash(payload)}"

    def run(self, kind: str, label: str, payload: dict, work: Callable[[Path], dict]) -> dict:
        """Return the stored result of this unit, or compute, store and return it.

        Args:
            kind: what the unit is (`teacher_eval`, `train`, ...).
            label: a readable name for logs and tables.
            payload: everything the result depends on; its hash is the unit's key.
            work: computes the result; receives the path of the unit's log file.
        """
        key = self.key(kind, payload)
        stored = self.store.run(key)
        if stored and stored["status"] == "done":
            if key not in self.computed_keys:  # not one this run has just computed for another use
                self.skipped.append(label)
                info(f"[dim]done earlier:[/dim] {label}")
            return stored["result"]
        log_path = self.log_dir / f"{kind}-{key.split(':')[1]}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.store.save_run(key, kind, "running", {"label": label, **payload}, None, self.experiment)
        started = time.time()
        info(f"[bold]{kind}[/bold] {label} (log: {log_path})")
        with log_path.open("a") as log:
            log.write(f"== {label} ({key}) started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            log.write(json.dumps(payload, indent=1, default=str) + "\n")
        outer, self.current = self.current, key  # units nest: a train unit may run its teach unit
        try:
            result = work(log_path)
        except BaseException:
            with log_path.open("a") as log:
                log.write(traceback.format_exc())
            self.store.save_run(key, kind, "failed", {"label": label, **payload}, None, self.experiment)
            raise
        finally:
            self.current = outer
        result = {
            **result,
            "label": label,
            "run_key": key,
            "seconds": round(time.time() - started, 1),
            "log": str(log_path),
        }
        with log_path.open("a") as log:
            log.write(json.dumps(result, indent=1, default=str) + "\n== done\n")
        self.store.save_run(key, kind, "done", {"label": label, **payload}, result, self.experiment)
        self.done.append(label)
        self.computed_keys.add(key)
        info(
            f"finished {label} in {result['seconds']} s"
            + (f": acc {result['acc']:.3f}" if isinstance(result.get("acc"), float) else "")
        )
        return result


def _die_with_parent(parent: int):
    """A pre-exec hook that makes the child receive SIGKILL when its parent dies (Linux), so a
    killed `run` leaves no evaluation behind to write into the store after it. Elsewhere: None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the hook runs in the forked child

    def hook() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the hook ran
            os._exit(1)

    return hook


def evaluate_in_subprocess(
    model: str,
    task: str,
    split: str,
    limit: int | None,
    seed: int,
    db: Path,
    log_path: Path,
    batch_size: int = 16,
    device: str = "auto",
    mode: str = "loglikelihood",
    num_fewshot: int = 0,
    max_input_tokens: int | None = None,
    run_key: str | None = None,
) -> dict:
    """`tinystudent eval --json` in a fresh process, so peak memory belongs to this model alone.

    The child dies with this process; its evaluation is stored under `run_key`, replacing any an
    earlier, killed attempt at the same unit left, so the store holds one result per unit."""
    cmd = [
        sys.executable,
        "-m",
        "tinystudent",
        "eval",
        "--model",
        model,
        "--task",
        task,
        "--split",
        split,
        "--seed",
        str(seed),
        "--json",
        "--db",
        str(db),
        "--batch-size",
        str(batch_size),
        "--device",
        device,
        "--mode",
        mode,
    ]
    if run_key:
        cmd += ["--run-key", run_key]
    if limit:
        cmd += ["--limit", str(limit)]
    if num_fewshot:
        cmd += ["--num-fewshot", str(num_fewshot)]
    if max_input_tokens:
        cmd += ["--max-input-tokens", str(max_input_tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_die_with_parent(os.getpid()))
    with log_path.open("a") as log:
        log.write("$ " + " ".join(cmd) + "\n" + done.stderr)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"evaluating {model} failed (see {log_path}): {' | '.join(tail)}")
    return json.loads(done.stdout.strip().splitlines()[-1])
