"""`run --check`'s look at the vocabularies of a study's token-level objectives.

`logit_kd` and `onpolicy_kd` compare a teacher model's next-token distribution with the student's
on the student's tokens, so both must give every token the same id. When the run loads the models
it checks that (`distill.vocab.check_vocab`, which also aligns padded output layers); this check
finds a mismatch before hours are spent, comparing the tokenizers alone, and only those already on
this machine (a local folder, or the Hugging Face cache): it downloads nothing, so a study of Hub
models checks offline too. `uld_kd` reads each text in the teacher's own tokens: never compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinystudent.distill.terms import TEACHER_MODELS, term
from tinystudent.experiments.config import Experiment


@dataclass
class VocabularyCheck:
    """What was compared: (student, teacher) model pairs whose tokenizers match, and those whose
    tokenizers are not on this machine (the run checks them when it loads the models)."""

    matched: list[tuple[str, str]] = field(default_factory=list)
    not_here: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        if not self.matched and not self.not_here:
            return []
        said = [f"the tokenizers of {len(self.matched)} student/teacher pair(s) match"] if self.matched else []
        if self.not_here:
            said.append(
                f"{len(self.not_here)} pair(s) not checked here (a tokenizer is not on this machine): "
                "checked when the run loads them"
            )
        return ["teacher models (logit_kd, onpolicy_kd): " + "; ".join(said)]


def _vocabulary(model: str, cache: dict[str, dict | None]) -> dict | None:
    """The tokenizer's vocabulary of a local folder or a model in the Hugging Face cache, or None
    when it is not on this machine (nothing is downloaded)."""
    if model not in cache:
        from pathlib import Path

        from transformers import AutoTokenizer

        try:
            folder = Path(model).expanduser()
            source = str(folder) if folder.is_dir() else model
            cache[model] = AutoTokenizer.from_pretrained(source, local_files_only=True).get_vocab()
        except Exception:  # not cached, a GGUF file, no tokenizer: the run checks it when it loads the models
            cache[model] = None
    return cache[model]


def _difference(student: dict, teacher: dict) -> str:
    for token, index in student.items():
        if teacher.get(token) != index:
            return f"token {token!r} is id {index} for the student, {teacher.get(token)} for the teacher"
    missing = next(iter(set(teacher) - set(student)), None)
    return f"token {missing!r} is missing from the student's tokenizer"


def check_vocabularies(experiment: Experiment) -> VocabularyCheck:
    """Compare the tokenizers of every student and teacher model a same-vocabulary token-level
    objective pairs (`logit_kd`, `onpolicy_kd`; not `uld_kd`), where both are on this machine.

    Raises:
        ValueError: naming the objective, both models and a token they disagree on, and `uld_kd`.
    """
    from tinystudent.models.kinds import kind_adapter

    found, seen = VocabularyCheck(), set()
    cache: dict[str, dict | None] = {}
    for student in experiment.students:
        if student.kind is not None and not kind_adapter(student.kind).next_token:
            continue  # the plan skips its token-level runs
        for objective in experiment.methods_of(student).objectives:
            spec = experiment.objective(objective)
            learnt = term(spec.term)
            if learnt.teacher_data != TEACHER_MODELS or learnt.teacher_tokens:
                continue
            for name in experiment.teacher_models_of(spec):
                teacher = experiment.teacher(name)
                pair = (student.model, teacher.model_id)
                if pair in seen:
                    continue
                seen.add(pair)
                mine, theirs = _vocabulary(pair[0], cache), _vocabulary(pair[1], cache)
                if mine is None or theirs is None:
                    found.not_here.append(pair)
                elif mine == theirs:
                    found.matched.append(pair)
                else:
                    raise ValueError(
                        f"students.{student.name}: {objective!r}: {spec.term} compares next-token distributions "
                        f"token by token, but student {student.name!r} ({student.model}, {len(mine)} tokens) and "
                        f"teacher {name!r} ({teacher.model_id}, {len(theirs)} tokens) have different tokenizers: "
                        f"{_difference(mine, theirs)}. Use uld_kd:{name} (Universal Logit Distillation: each "
                        f"model reads the text in its own tokens), or rationale:{name} or choice_kd:{name}"
                    )
    return found


__all__ = ["VocabularyCheck", "check_vocabularies"]
