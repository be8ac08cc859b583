"""Model kinds: one `ModelKind` per kind, found by name with `kind_adapter`.

A kind is one module in this package named after it, holding `ADAPTER`, its `ModelKind`; adding
a kind means adding that module: `KIND_NAMES` lists every module here but `base`. Kinds from
elsewhere can be added with `register_kind`.

The modules are imported on first use: they use scoring, training and generation code from
the rest of the package, which itself looks kinds up here.
"""

from __future__ import annotations

import importlib
import pkgutil

from tinystudent.models.kinds.base import ModelKind, pad_token_id

KIND_NAMES = tuple(sorted(module.name for module in pkgutil.iter_modules(__path__) if module.name != "base"))

_ADAPTERS: dict[str, ModelKind] = {}


def register_kind(adapter: ModelKind) -> ModelKind:
    """Make `adapter` the kind named `adapter.name`."""
    _ADAPTERS[adapter.name] = adapter
    return adapter


def kind_adapter(kind: str | ModelKind) -> ModelKind:
    """The `ModelKind` named `kind` (`causal`, `seq2seq`, `encoder`); a `ModelKind` is returned as is."""
    if isinstance(kind, ModelKind):
        return kind
    if kind not in _ADAPTERS and kind in KIND_NAMES:
        register_kind(importlib.import_module(f"{__name__}.{kind}").ADAPTER)
    if kind not in _ADAPTERS:
        raise ValueError(f"model kind must be one of {known_kinds()}, got {kind!r}")
    return _ADAPTERS[kind]


def known_kinds() -> tuple[str, ...]:
    """Names of every kind: the built-in ones, then any registered since."""
    return KIND_NAMES + tuple(name for name in _ADAPTERS if name not in KIND_NAMES)


__all__ = ["KIND_NAMES", "ModelKind", "kind_adapter", "known_kinds", "pad_token_id", "register_kind"]
