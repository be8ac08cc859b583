"""Frozen teacher models for token-level distillation: loading them (one or several, by name),
what each one reads (the student's tokens, or its own: cross-tokenizer terms), and running them on
a batch.

A teacher used by `logit_kd`, `onpolicy_kd` or `hidden` runs on the student's token batches and
must share its vocabulary (`vocab.check_vocab`); one used by `uld_kd` reads the same texts in its
own tokens, its target rows paired with the student's by position (`data.align_targets`). Several
teachers of `logit_kd` or `onpolicy_kd` are one target, their distributions averaged
(`objectives.mixed_states`), on each token batch with the shares of the terms whose divergence
covers it (`kd_shares`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tinystudent.distill.config import TrainConfig
from tinystudent.distill.data import align_targets, token_batch
from tinystudent.distill.objectives import StudentBatch, TeacherStates, TeacherTokens, mixed_states, teacher_states
from tinystudent.distill.terms import TEACHER_MODELS, Term, TermWeights, terms
from tinystudent.distill.vocab import check_vocab
from tinystudent.log import info
from tinystudent.models.batches import Features
from tinystudent.models.kinds import ModelKind, kind_adapter
from tinystudent.models.loading import LoadedModel, load_model
from tinystudent.models.students import MANIFEST


@dataclass
class FrozenTeacher:
    """A loaded teacher model for token-level distillation, frozen in eval mode (not a
    `teachers.base.Teacher`, which writes rationales and answers).

    Attributes:
        want_rows: its rows on the student's tokens feed a divergence (logit_kd).
        name: its name in weights and objective strings (`logit_kd:<name>`).
        student_tokens: it runs on the student's token batches (logit_kd, hidden: one vocabulary).
        own_tokens: it reads the same texts in its own tokens (uld_kd); `features` holds them.
    """

    loaded: LoadedModel
    head: Callable[[torch.Tensor], torch.Tensor]
    layers: list[int]
    want_rows: bool
    name: str = "teacher"
    student_tokens: bool = True
    own_tokens: bool = False
    features: dict[str, Features] = field(default_factory=dict)


def hidden_pairs(
    student_path: Path, student_core, teacher_core, kind: str | ModelKind, configured: list[tuple[int, int]] | None
) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices for patient KD (0 = embeddings, i = after layer i,
    the last = the final normalised output). A scaled-down student's layers pair with the layers
    they were copied from; otherwise layers pair evenly by depth (PKD-skip)."""
    adapter = kind_adapter(kind)
    n_student, n_teacher = adapter.depth(student_core.config), adapter.depth(teacher_core.config)
    pairs: list[tuple[int, int]]
    if configured:
        pairs = [(s, t) for s, t in configured]
    else:
        manifest = student_path / MANIFEST
        kept = json.loads(manifest.read_text()).get("kept", {}) if manifest.exists() else {}
        if adapter.decoder_only and len(kept) == 1:  # one stack, cut from the teacher's
            layers = next(iter(kept.values()))
            pairs = [(i + 1, layers[i] + 1) for i in range(len(layers) - 1)] + [(n_student, n_teacher)]
        else:
            pairs = [(j, round(j * n_teacher / n_student)) for j in range(1, n_student + 1)]
    for s, t in pairs:
        if not (0 <= s <= n_student and 0 <= t <= n_teacher):
            raise ValueError(
                f"hidden_layers pair ({s}, {t}) is outside the student's 0..{n_student} "
                f"or the teacher's 0..{n_teacher} hidden states"
            )
    return pairs


def named_teachers(teacher) -> dict:
    """Teacher models by name: a dict as given; one model (a name or path, or a `LoadedModel`)
    is named by itself; None is none."""
    if teacher is None:
        return {}
    if isinstance(teacher, dict):
        return dict(teacher)
    return {teacher.name if isinstance(teacher, LoadedModel) else str(teacher): teacher}


def _learns_from(found: Term, weights: TermWeights, name: str) -> bool:
    """Whether active term `found` learns from teacher model `name` (a term with one weight: from
    the teacher there is)."""
    return name in weights.per_teacher(found.name) if found.per_teacher else weights.scalar(found.name) > 0


def load_teacher(
    teacher,
    student: LoadedModel,
    config: TrainConfig,
    device: torch.device,
    kd_dtype: torch.dtype | None,
    *,
    weights: TermWeights | None = None,
    name: str | None = None,
) -> tuple[FrozenTeacher, int | None, list[int]]:
    """Load and freeze the teacher, check vocabularies and pick the layers to match (`weights`:
    the run's resolved weights, by default the config's with this one teacher model).

    The vocabularies are checked only when a term compares the teacher's logits with the
    student's on the student's tokens (logit_kd, hidden); a cross-tokenizer term (uld_kd) reads
    the texts in the teacher's own tokens."""
    name = name if name is not None else next(iter(named_teachers(teacher)))
    weights = weights if weights is not None else config.weights.resolve({TEACHER_MODELS: [name]})
    used = [t for t in terms() if t.teacher_model and _learns_from(t, weights, name)]
    student_tokens = any(not t.teacher_tokens for t in used) or not used
    own_tokens = any(t.teacher_tokens for t in used)
    if isinstance(teacher, str):
        teacher = load_model(teacher, device=device, dtype="bfloat16" if kd_dtype == torch.bfloat16 else "float32")
    adapter = student.adapter  # its token rows and output head are read off the teacher too
    same_rows = teacher.adapter.next_token and teacher.adapter.decoder_only == adapter.decoder_only
    if not (same_rows and adapter.next_token):
        no_tokens = f" ({student.kind} models have no next-token distribution; use choice_kd)"
        raise ValueError(
            f"token-level distillation needs a teacher of the student's kind: teacher "
            f"{teacher.name} is {teacher.kind}, student {student.name} is {student.kind}"
            f"{'' if adapter.next_token else no_tokens}"
        )
    teacher.model.eval().requires_grad_(False)
    kd_vocab = None
    if student_tokens:
        alignment = check_vocab(
            student.model, student.tokenizer, teacher.model, teacher.tokenizer, student.name, teacher.name
        )
        kd_vocab = alignment.size if alignment.trimmed else None
    if config.teacher_logits_top_k is None:  # stored logits: checked only if the teacher has to run
        adapter.check_output_layer(teacher.model, teacher.name)
    head = adapter.output_head(teacher.model)
    pairs = []
    if student_tokens and any(t.wants_layers(weights) for t in terms()):
        pairs = hidden_pairs(Path(student.resolved.path), student.model, teacher.model, adapter, config.hidden_layers)
        info(f"hidden-state matching (student, teacher): {pairs}")
    want_rows = any(t.kd_weight(weights) > 0 and not t.teacher_tokens for t in used)
    frozen = FrozenTeacher(teacher, head, [t for _, t in pairs], want_rows, name, student_tokens, own_tokens)
    return frozen, kd_vocab, [s for s, _ in pairs]


def load_teachers(
    teachers: dict,
    student: LoadedModel,
    config: TrainConfig,
    device: torch.device,
    kd_dtype: torch.dtype | None,
    weights: TermWeights,
) -> tuple[dict[str, FrozenTeacher], int | None, list[int]]:
    """Each named teacher model loaded once (`load_teacher`), the logit entries all of them share
    with the student, and the student's layers to match (hidden-state matching: one teacher)."""
    if len(teachers) > 1 and any(t.wants_layers(weights) for t in terms()):
        raise ValueError(
            f"hidden-state matching pairs the student's layers with one teacher's, but {len(teachers)} teacher "
            f"models were given ({', '.join(teachers)}); give one --teacher-model, or set weights.hidden to 0"
        )
    loaded: dict[str, FrozenTeacher] = {}
    sizes: list[int] = []
    layers: list[int] = []
    for name, model in teachers.items():
        loaded[name], size, found_layers = load_teacher(
            model, student, config, device, kd_dtype, weights=weights, name=name
        )
        layers = layers or found_layers
        if size is not None:
            sizes.append(size)
    return loaded, min(sizes) if sizes else None, layers


def _pair(features: Features | None, batch_name: str) -> tuple[list[int], list[int]] | None:
    """The (prompt, target) pair of token batch `batch_name` in these features (None: none)."""
    if features is None:
        return None
    if batch_name == "answer":
        return features.prompt, features.choices[features.gold]
    return features.rationales.get(batch_name.partition(":")[2])


def teacher_tokens(
    teachers: dict[str, FrozenTeacher],
    features: dict[str, Features],
    adapter: ModelKind,
    texts: dict[str, list[str]],
    pack: bool,
) -> dict[str, dict[str, TeacherTokens]]:
    """Each cross-tokenizer teacher's own tokens of every token batch's texts (`texts`: batch ->
    question ids of its pairs; `features`: the student's, laid out by `adapter`), the target rows
    aligned with the student's (`data.align_targets`)."""
    own = {name: t for name, t in teachers.items() if t.own_tokens}
    found: dict[str, dict[str, TeacherTokens]] = {name: {} for name in own}
    for batch_name, ids in texts.items():
        student_pairs = [_pair(features[i], batch_name) for i in ids]
        their = {name: [_pair(t.features.get(i), batch_name) for i in ids] for name, t in own.items()}
        student_rows, rows, present = align_targets(
            student_pairs,  # type: ignore[arg-type]  # every id of `texts` has its pair
            their,
            adapter,
            pack,
        )
        for name, t in own.items():
            if not present[name]:
                continue
            tokenizer = t.loaded.tokenizer
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            pairs = [their[name][i] for i in present[name]]
            tb = token_batch(pairs, t.loaded.adapter, pad, pack)  # type: ignore[arg-type]
            found[name][batch_name] = TeacherTokens(tb, student_rows, rows[name])
    return found


def kd_shares(weights: TermWeights, rows: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per token batch, each teacher model's weight per target token of the divergence there: the
    sum, over the terms learnt per teacher on the student's tokens (logit_kd, onpolicy_kd) whose
    divergence covers the batch (`Term.kd_on`), of that teacher's weight spread over the target
    tokens of every batch the term covers (`rows`: batch -> target tokens), as the token pass
    spreads the term's weight (`StudentObjectives._kd_scales`). Their sum on a batch is its
    divergence's weight per token; their proportions are the teachers' shares of its mixture.
    A term given one number (not resolved per teacher) has no teacher named: it adds nothing."""
    shares: dict[str, dict[str, float]] = {name: {} for name in rows}
    for found in terms():
        if not (found.teacher_model and found.per_teacher and not found.teacher_tokens):
            continue
        per_teacher = {t: w for t, w in weights.per_teacher(found.name).items() if w > 0}
        covered = [name for name in rows if found.kd_on(name)]
        total = sum(rows[name] for name in covered)
        for name in covered if per_teacher and total else []:
            for teacher, weight in per_teacher.items():
                shares[name][teacher] = shares[name].get(teacher, 0.0) + weight / total
    return shares


def teacher_passes(
    teachers: dict[str, FrozenTeacher],
    kd_vocab: int | None,
    batch: StudentBatch,
    weights: TermWeights,
    temperature: float,
) -> tuple[dict[str, TeacherStates], dict[str, dict[str, TeacherStates]], bool]:
    """Every teacher model run once on what it reads: (the states on the student's tokens by
    token batch, several teachers mixed into one per batch (`objectives.mixed_states`, over the
    first `kd_vocab` logits) with the shares of the terms that cover it (`kd_shares`); each
    cross-tokenizer teacher's states on its own tokens; whether the student must keep hidden
    states). One teacher on the student's tokens is its states as they are, on every batch."""
    on_student: dict[str, dict[str, TeacherStates]] = {}
    own: dict[str, dict[str, TeacherStates]] = {}
    for name, t in teachers.items():
        core, kind = t.loaded.model, t.loaded.kind
        if t.student_tokens:
            on_student[name] = teacher_states(core, kind, t.head, batch, t.want_rows, t.layers)
        if t.own_tokens and batch.teacher_tokens.get(name):
            theirs = {b: tt.batch for b, tt in batch.teacher_tokens[name].items()}
            own[name] = teacher_states(core, kind, t.head, batch, True, [], theirs)
    mixed: dict[str, TeacherStates] = {}
    if len(on_student) == 1:
        mixed = next(iter(on_student.values()))
    elif on_student:
        shares = kd_shares(weights, {name: tb.n_targets for name, tb in batch.token_batches().items()})
        for batch_name, by_teacher in shares.items():
            # Only the teachers a covering term learns from there (one: itself, its plain output layer).
            chosen = {n: {batch_name: on_student[n][batch_name]} for n in on_student if by_teacher.get(n, 0.0) > 0}
            found = mixed_states(chosen, by_teacher, temperature, kd_vocab) if chosen else {}
            mixed[batch_name] = found.get(batch_name, TeacherStates(None, None))
    want_hidden = any(t.layers for t in teachers.values())
    return mixed, own, want_hidden
