"""The objective's terms: one module per term, found by name with `term`.

A term is one module in this package holding `TERM`, an instance of a `Term` subclass. It declares
its name, whether an objective string may name a teacher after it (`rationale:flan-t5-xl`), its
default weight (one number, or one per teacher), what the run must load for it (teachers' rationales
or choice scores, a frozen teacher model), what a batch must carry, its input check, and its loss
on a batch. Everything else reads the registry: the objective parser (`objective_spec`), the weights
(`config.ObjectiveWeights`), the batch builder (`trainee.make_batch`), the checks (`loop.
check_objectives`), `tinystudent train --objective` (its help and which teachers it loads) and a
study's objective inputs. Adding an objective is adding one module here (or calling `register_term`
with a `Term` from anywhere); CONTRIBUTING.md walks through it.

The built-in terms, in the order the loss adds them: `answer`, `rationale`, `choice_kd`,
`logit_kd`, `hidden`, `mutual`; then this package's other modules (`onpolicy_kd`: on-policy
distillation; `uld_kd`: cross-tokenizer), stored with a run's weights only when given, so adding
them changed no stored key.
"""

from __future__ import annotations

import importlib
import pkgutil

from tinystudent.distill.terms.base import (
    CHOICE_LOGPROBS,
    RATIONALES,
    TEACHER_MODELS,
    BatchNeeds,
    Term,
    TermContext,
    TermWeights,
)

_BUILT_IN = ("answer", "rationale", "choice_kd", "logit_kd", "hidden", "mutual")
TERM_MODULES = _BUILT_IN + tuple(
    sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in (*_BUILT_IN, "base"))
)

_TERMS: dict[str, Term] = {}
_LOADED: set[str] = set()


def register_term(term: Term) -> Term:
    """Make `term` the term named `term.name` (replacing one of that name); it comes after the
    built-in terms and this package's modules."""
    _load_all()
    return _add(term)


def unregister_term(name: str) -> None:
    """Forget a term registered with `register_term` (a built-in one stays)."""
    if name not in _BUILT_IN:
        _TERMS.pop(name, None)


def built_in(name: str) -> bool:
    """Whether `name` is one of tinystudent's own terms (always stored with a run's weights)."""
    return name in _BUILT_IN


def _add(term: Term) -> Term:
    if not term.name or not term.name.isidentifier():
        raise ValueError(f"a term's name must be a plain word (letters, digits, _), got {term.name!r}")
    _TERMS[term.name] = term
    return term


def _load_all() -> None:
    for module in TERM_MODULES:
        if module not in _LOADED:
            _LOADED.add(module)
            found = importlib.import_module(f"{__name__}.{module}").TERM
            _TERMS.setdefault(found.name, found)


def terms() -> tuple[Term, ...]:
    """Every term: the built-in ones in their order, then the others as registered."""
    _load_all()
    return tuple(_TERMS.values())


def term_names() -> tuple[str, ...]:
    return tuple(t.name for t in terms())


def term(name: str) -> Term:
    """The term named `name`; an unknown name is an error listing the known ones."""
    _load_all()
    if name not in _TERMS:
        raise ValueError(f"unknown objective term {name!r}: the terms are {', '.join(_TERMS)}")
    return _TERMS[name]


def teachers_of(weights: TermWeights, data: str) -> list[str]:
    """The teachers whose `data` (RATIONALES, CHOICE_LOGPROBS) an active term learns from, in the
    order of the terms, then of their weights."""
    found: dict[str, None] = {}
    for each in terms():
        if each.teacher_data == data:
            found.update(dict.fromkeys(weights.per_teacher(each.name)))
    return list(found)


__all__ = [
    "CHOICE_LOGPROBS",
    "RATIONALES",
    "TEACHER_MODELS",
    "BatchNeeds",
    "Term",
    "TermContext",
    "TermWeights",
    "built_in",
    "register_term",
    "term",
    "term_names",
    "teachers_of",
    "terms",
    "unregister_term",
]
