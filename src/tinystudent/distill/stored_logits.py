"""Stored teacher logits: a teacher's top-k log-probabilities per target token, computed once per
training sequence and kept in the results database, so a second student, or a resumed run, learns
from them without running the teacher again (`TrainConfig.teacher_logits_top_k`).

The precompute is one step before training (`prepare_stored_logits`): every training question's
token sequences (its answer, each teacher's rationale) that the database does not hold yet go
through the teacher, a batch at a time, and each batch's rows are written in one transaction, so a
killed precompute keeps what it wrote and the next run computes only the rest. Training then reads
each micro-batch's rows (`TeacherLogits.states`) and the loss compares the student with them
(`sparse_kd`); the teacher model is freed unless hidden-state matching still needs it.

They serve one teacher model's `logit_kd` on the data's sequences (`check_stored_logits`): several
teachers' mixture (`logit_kd:A+B`), `onpolicy_kd` (the student's own samples) and `uld_kd` (the
teacher's own tokens) need the live teachers, and a run asking for them with stored logits is
refused before any work.

A row (table `teacher_logits`) is keyed by the teacher's identity (the hash of its weights), the
sequence's tokens (prompt and target, in the student's tokenizer, which logit KD shares with the
teacher), k, the compared vocabulary, the stored dtype and the dtypes the teacher ran in. Its
value is one zlib-compressed blob: the [tokens, k] int32 token ids, the [tokens, k] float16 or
float32 log-probabilities at temperature 1 and the [tokens] float32 log tail mass, little-endian,
written with `ndarray.tobytes` and read with `np.frombuffer` (never pickle).
"""

from __future__ import annotations

import contextlib
import gc
import time
import zlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from tinystudent.distill.objectives import StudentObjectives, TeacherStates
from tinystudent.distill.sparse_kd import SparseTeacher
from tinystudent.distill.teacher_models import FrozenTeacher
from tinystudent.distill.terms import terms
from tinystudent.distill.terms.base import STUDENT_SAMPLES
from tinystudent.distill.trainee import Trainee, token_pairs
from tinystudent.distill.vocab import output_rows
from tinystudent.hashing import stable_hash
from tinystudent.log import info
from tinystudent.models.batches import TokenBatch
from tinystudent.store import Store

if TYPE_CHECKING:
    from tinystudent.distill.config import TrainConfig
    from tinystudent.distill.terms import TermWeights
    from tinystudent.tasks.schema import Example

FORMAT = 1  # the blob's layout; a new one keys new rows
DTYPES = {"float16": "<f2", "float32": "<f4"}
Pair = tuple[list[int], list[int]]


class StoredLogitsError(ValueError):
    """A stored row of teacher logits cannot be read back as it was written."""


# --- the blob ------------------------------------------------------------------------------------


def encode_logits(indices: np.ndarray, logprobs: np.ndarray, tail: np.ndarray, dtype: str) -> bytes:
    """One sequence's [tokens, k] ids and log-probabilities and [tokens] log tail mass as a blob."""
    raw = (
        np.ascontiguousarray(indices, dtype="<i4").tobytes()
        + np.ascontiguousarray(logprobs, dtype=DTYPES[dtype]).tobytes()
        + np.ascontiguousarray(tail, dtype="<f4").tobytes()
    )
    return zlib.compress(raw, 6)


def decode_logits(
    blob: bytes, tokens: int, k: int, dtype: str, vocab: int | None = None, where: str = "a stored row"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [tokens, k] int32, log-probabilities [tokens, k] float32, log tail [tokens] float32).

    Raises:
        StoredLogitsError: the blob does not decompress (zlib's checksum), is not the size its
            row says, or holds ids outside the vocabulary or log-probabilities that are NaN or
            above 0.
    """
    if dtype not in DTYPES:
        raise StoredLogitsError(f"{where}: unknown dtype {dtype!r}")
    try:
        raw = zlib.decompress(blob)
    except (zlib.error, TypeError) as err:
        raise StoredLogitsError(f"{where}: the blob does not decompress ({err})") from None
    width = np.dtype(DTYPES[dtype]).itemsize
    sizes = (tokens * k * 4, tokens * k * width, tokens * 4)
    if len(raw) != sum(sizes):
        raise StoredLogitsError(
            f"{where}: the blob holds {len(raw)} bytes, {sum(sizes)} expected for {tokens} tokens x top-{k} ({dtype})"
        )
    indices = np.frombuffer(raw, dtype="<i4", count=tokens * k).reshape(tokens, k)
    logprobs = np.frombuffer(raw, dtype=DTYPES[dtype], count=tokens * k, offset=sizes[0]).reshape(tokens, k)
    tail = np.frombuffer(raw, dtype="<f4", count=tokens, offset=sizes[0] + sizes[1])
    if indices.size and (indices.min() < 0 or (vocab is not None and indices.max() >= vocab)):
        raise StoredLogitsError(f"{where}: token ids outside the vocabulary (0..{vocab})")
    logprobs = logprobs.astype(np.float32)
    if np.isnan(logprobs).any() or np.isnan(tail).any() or (logprobs > 1e-3).any() or (tail > 1e-3).any():
        raise StoredLogitsError(f"{where}: log-probabilities that are NaN or above 0")
    return indices, logprobs, tail


def raw_bytes_per_token(k: int, dtype: str = "float16") -> int:
    """Uncompressed bytes per target token: k int32 ids, k log-probabilities, one float32 tail."""
    return k * (4 + np.dtype(DTYPES[dtype]).itemsize) + 4


def stored_bytes_per_token(store: Store, teacher: str | None = None) -> float | None:
    """Stored (compressed) bytes per target token over the `teacher_logits` rows (of one teacher
    identity); None when there are none."""
    size, tokens = store.teacher_logits_size(teacher)
    return size / tokens if tokens else None


# --- reading and writing -------------------------------------------------------------------------


@dataclass
class TeacherLogits:
    """One teacher's stored logits in one database, as a run reads and writes them.

    Attributes:
        store: the results database.
        teacher: the teacher's identity (`models.loading.resolve_model(...).identity`).
        top_k: k asked for (a vocabulary smaller than k stores all of it).
        kd_vocab: the compared vocabulary (vocabulary alignment), None: all of the teacher's.
        vocab: the compared vocabulary's size (kd_vocab, else the teacher's output rows).
        dtype: `float16` or `float32` log-probabilities.
        ran_in: the dtypes the teacher ran in (its weights', the autocast's).
        pad_id, packing, layout: how the student lays out its token batches (`ModelKind.token_batch`).
    """

    store: Store
    teacher: str
    top_k: int
    kd_vocab: int | None
    dtype: str
    ran_in: str
    vocab: int
    pad_id: int
    packing: bool
    layout: Callable[[list[Pair], int, bool], TokenBatch]

    def close(self) -> None:
        self.store.close()

    @property
    def k(self) -> int:
        """The k stored: top_k, or the whole compared vocabulary when it is smaller."""
        return min(self.top_k, self.vocab)

    def key(self, pair: Pair) -> str:
        prompt, target = pair
        return stable_hash(
            {
                "format": FORMAT,
                "teacher": self.teacher,
                "prompt": list(prompt),
                "target": list(target),
                "top_k": self.top_k,
                "kd_vocab": self.kd_vocab,
                "dtype": self.dtype,
                "ran_in": self.ran_in,
            },
            32,
        )

    def missing(self, pairs: list[Pair]) -> list[Pair]:
        """The pairs (each once) whose rows are not stored yet, in their order."""
        by_key = {self.key(p): p for p in pairs}
        held = self.store.teacher_logit_keys(list(by_key))
        return [p for key, p in by_key.items() if key not in held]

    def read(self, pairs: list[Pair]) -> list[SparseTeacher]:
        """Each pair's stored rows (CPU tensors), in order.

        Raises:
            StoredLogitsError: a row is missing or damaged (the message says how to recompute it)."""
        keys = [self.key(p) for p in pairs]
        rows = self.store.teacher_logits(list(dict.fromkeys(keys)))
        found = []
        for key, (_, target) in zip(keys, pairs):
            if key not in rows:
                raise StoredLogitsError(
                    f"{self.store.path}: no stored teacher logits for a training sequence ({key}); they are "
                    "computed before training (prepare_stored_logits)"
                )
            row = rows[key]
            where = f"{self.store.path}: stored teacher logits {key}"
            try:
                if row["tokens"] != len(target):
                    raise StoredLogitsError(f"{where}: {row['tokens']} tokens stored, the sequence has {len(target)}")
                ids, logprobs, tail = decode_logits(
                    row["blob"], row["tokens"], row["top_k"], row["dtype"], self.vocab, where
                )
            except StoredLogitsError as err:
                raise StoredLogitsError(
                    f'{err}; the row is damaged: delete it (sqlite3 {self.store.path} "DELETE FROM teacher_logits '
                    f"WHERE logits_key = '{key}'\") and run again, which recomputes it"
                ) from None
            found.append(
                SparseTeacher(
                    torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(logprobs), torch.from_numpy(tail.copy())
                )
            )
        return found

    def batch_rows(self, pairs: list[Pair]) -> SparseTeacher:
        """The stored rows of one token batch of `pairs`, in the order of its target rows (a packed
        batch reorders the pairs: the student's own layout of the pairs says where each row goes)."""
        owner = _row_owners(
            self.layout([(p, [i] * len(t)) for i, (p, t) in enumerate(pairs)], self.pad_id, self.packing)
        )
        order = torch.unique_consecutive(owner).tolist()
        if sorted(order) != list(range(len(pairs))) or owner.numel() != sum(len(t) for _, t in pairs):
            raise ValueError("a token batch's target rows are not each sequence's targets in order")
        stored = self.read(pairs)
        return SparseTeacher(
            torch.cat([stored[i].indices for i in order]),
            torch.cat([stored[i].logprobs for i in order]),
            torch.cat([stored[i].tail for i in order]),
        )

    def states(
        self, pairs: dict[str, list[Pair]], live: dict[str, TeacherStates] | None, device
    ) -> dict[str, TeacherStates]:
        """Each token batch's teacher states with its stored logits (and the live teacher's hidden
        states where hidden-state matching ran it)."""
        found = dict(live or {})
        for name, batch_pairs in pairs.items():
            sparse = self.batch_rows(batch_pairs).to(device)
            base = found.get(name)
            found[name] = replace(base, rows=None, sparse=sparse) if base else TeacherStates(None, None, sparse=sparse)
        return found

    def compute(
        self, teacher: FrozenTeacher, pairs: list[Pair], *, batch_size: int, chunk_tokens: int, autocast
    ) -> int:
        """Run the teacher on the pairs not stored yet and store their rows, one transaction per batch
        of `batch_size` pairs; returns the target tokens computed."""
        loaded = teacher.loaded
        adapter, core = loaded.adapter, loaded.model
        adapter.check_output_layer(core, loaded.name)  # (a probe forward: only when the teacher runs)
        tokens = 0
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            with torch.no_grad(), autocast():
                tb = adapter.token_batch(chunk, self.pad_id, False).to(loaded.device)
                rows, _, _ = adapter.token_rows(core, tb, [])
                pieces = [
                    self._top_k(teacher.head(rows[i : i + chunk_tokens])) for i in range(0, rows.shape[0], chunk_tokens)
                ]
            ids, logprobs, tail = (torch.cat(parts).cpu().numpy() for parts in zip(*pieces))
            records, offset = [], 0
            for pair in chunk:
                n = len(pair[1])
                part = slice(offset, offset + n)
                blob = encode_logits(ids[part], logprobs[part], tail[part], self.dtype)
                records.append((self.key(pair), self.teacher, ids.shape[1], self.kd_vocab, self.dtype, n, blob))
                offset += n
            if offset != ids.shape[0]:
                raise ValueError(f"the teacher gave {ids.shape[0]} target rows for {offset} target tokens")
            self.store.save_teacher_logits(records)
            tokens += offset
        return tokens

    def _top_k(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = logits.float()
        logprobs = F.log_softmax(logits[:, : self.kd_vocab or logits.shape[-1]], dim=-1)
        k = min(self.top_k, logprobs.shape[-1])
        top = logprobs.topk(k, dim=-1)
        if k < logprobs.shape[-1]:
            tail = logprobs.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        else:
            tail = torch.full(logprobs.shape[:1], float("-inf"), device=logprobs.device)
        return top.indices.to(torch.int32), top.values, tail


def _row_owners(layout: TokenBatch) -> torch.Tensor:
    """The target ids of a laid-out token batch, one per target row (`ModelKind.token_rows`' order)."""
    if layout.labels is not None:
        return layout.labels[layout.labels != -100]
    if layout.next_ids is None or layout.target_mask is None:
        raise ValueError("a token batch with neither labels nor target positions")
    return layout.next_ids[layout.target_mask]


# --- the step before training ----------------------------------------------------------------------


def check_stored_logits(weights: TermWeights, teachers: dict) -> None:
    """Refuse, before any work, a run whose token-level terms stored logits cannot serve.

    Stored logits are one teacher model's top-k on the training data's own token sequences, for
    the divergence the token pass computes on them (logit_kd); hidden-state matching still runs
    the teacher. What they cannot stand in for:

    * several teacher models (`logit_kd:A+B`): their mixture averages the whole distributions
      (`losses.mixture_logits`), and one teacher's top-k says nothing of its probabilities of the
      other's top-k tokens, so a mixture of stored rows would not be the live mixture;
    * a divergence on the student's own samples (onpolicy_kd): they change every step, so only
      the live teacher can read them;
    * a teacher reading the texts in its own tokens (uld_kd): its rows are not the student's
      sequences, and it compares sorted distributions, not the top-k.

    Args:
        weights: the run's resolved weights.
        teachers: the teacher models by name (`teacher_models.named_teachers`).

    Raises:
        ValueError: what does not fit, and the way out.
    """
    active = [t for t in terms() if weights.active(t.name)]
    if not teachers:
        raise ValueError("teacher_logits_top_k stores a teacher model's logits: give one (--teacher-model)")
    if len(teachers) > 1:
        raise ValueError(
            f"teacher_logits_top_k stores one teacher model's top-k logits, but {len(teachers)} teacher models were "
            f"given ({', '.join(teachers)}): several teachers' logit_kd mixes their whole distributions "
            "(losses.mixture_logits), which top-k rows cannot give; give one --teacher-model, or unset "
            "teacher_logits_top_k to run the teachers live"
        )
    on_samples = [t.name for t in active if t.teacher_model and t.kd_on(STUDENT_SAMPLES)]
    if on_samples:
        raise ValueError(
            f"teacher_logits_top_k cannot serve {', '.join(on_samples)}: its divergence is on answers the student "
            "samples afresh every step, which only the live teacher can read; unset teacher_logits_top_k (the "
            f"live teacher serves logit_kd too), or set weights.{on_samples[0]} to 0"
        )
    own_tokens = [t.name for t in active if t.teacher_tokens]
    if own_tokens:
        raise ValueError(
            f"teacher_logits_top_k cannot serve {', '.join(own_tokens)}: its teacher reads the texts in its own "
            "tokens, not the student's sequences the logits are stored for; unset teacher_logits_top_k, or set "
            f"weights.{own_tokens[0]} to 0"
        )
    if not any(t.teacher_model and t.kd_weight(weights) > 0 for t in active):
        raise ValueError(
            "teacher_logits_top_k stores a teacher model's logits for logit_kd: it needs weights.logit_kd > 0 "
            "and a teacher model (--teacher-model)"
        )


def stored_identity(identity: str | dict | None) -> str:
    """The one teacher model's identity, from a run description's (one model's, or by name)."""
    if isinstance(identity, dict) and len(identity) == 1:
        identity = next(iter(identity.values()))
    if not isinstance(identity, str):
        raise ValueError(f"stored teacher logits need exactly one teacher model, got {identity!r}")
    return identity


def prepare_stored_logits(
    trainee: Trainee,
    train: list[Example],
    config: TrainConfig,
    weights: TermWeights,
    *,
    teacher_identity: str,
    db,
    autocast_dtype: torch.dtype | None,
) -> TeacherLogits:
    """Make sure the database holds the teacher's top-k logits of every training sequence of
    `trainee` (computing the ones it lacks), log what is stored, and switch the trainee to them:
    its teacher model is dropped unless hidden-state matching still runs it.

    Args:
        trainee: a student set up with its teacher (`trainee.setup_trainee`).
        train: the training questions.
        config: the run's config (`teacher_logits_top_k`, `teacher_logits_dtype`, batch sizes).
        weights: the run's resolved weights.
        teacher_identity: the teacher's identity (the hash of its weights).
        db: the results database's path (None: the default one).
        autocast_dtype: the run's autocast dtype (None: plain float32): the teacher runs as in training.
    """
    teacher = trainee.teacher
    if teacher is None or config.teacher_logits_top_k is None:
        raise ValueError("stored teacher logits need a teacher model and teacher_logits_top_k")
    objective = getattr(trainee.objective, "module", trainee.objective)  # under DDP, the wrapped one
    if not isinstance(objective, StudentObjectives):
        raise TypeError(f"stored teacher logits train a StudentObjectives, not {type(objective).__name__}")
    kd_vocab = objective.kd_vocab
    device = torch.device(teacher.loaded.device)

    def autocast():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    ran_in = f"{next(teacher.loaded.model.parameters()).dtype}/{autocast_dtype}"
    tokenizer = trainee.loaded.tokenizer
    source = TeacherLogits(
        store=Store(db),
        teacher=teacher_identity,
        top_k=config.teacher_logits_top_k,
        kd_vocab=kd_vocab,
        vocab=kd_vocab or output_rows(teacher.loaded.model),
        dtype=config.teacher_logits_dtype,
        ran_in=ran_in,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        packing=config.packing,
        layout=trainee.loaded.adapter.token_batch,
    )
    everything = [p for pairs in token_pairs(trainee, train, config, weights).values() for p in pairs]
    wanted = len({source.key(p) for p in everything})
    missing = source.missing(everything)
    started = time.perf_counter()
    computed = 0
    if missing:
        info(f"stored teacher logits: computing {len(missing)} of {wanted} training sequences (top-{source.k})")
        computed = source.compute(
            teacher, missing, batch_size=config.eval_batch_size, chunk_tokens=config.kd_chunk_tokens, autocast=autocast
        )
    per_token = stored_bytes_per_token(source.store, teacher_identity)
    info(
        f"stored teacher logits in {source.store.path}: {wanted - len(missing)} of {wanted} training sequences were "
        f"stored, {len(missing)} computed ({computed} target tokens, {time.perf_counter() - started:.1f} s); "
        f"{per_token or 0:.1f} bytes per target token stored (top-{source.k} {source.dtype}, "
        f"{raw_bytes_per_token(source.k, source.dtype)} uncompressed)"
    )
    trainee.stored_logits = source
    trainee.teachers = {teacher.name: replace(teacher, want_rows=False)} if teacher.layers else {}
    if not trainee.teachers:  # the teacher's weights go, unless the caller holds them
        del teacher
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return source
