"""Models: loading by Hub id, folder or GGUF file, offline copies, parameter counts, and one
adapter per model kind (`kinds`: what a causal, seq2seq or encoder model can do, and how)."""

from tinystudent.models.kinds import ModelKind, kind_adapter, register_kind
from tinystudent.models.loading import (
    OFFLINE_MODELS,
    LoadedModel,
    ResolvedModel,
    load_model,
    model_kind,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from tinystudent.models.params import count_parameters, size_on_disk_mb

__all__ = [
    "OFFLINE_MODELS",
    "LoadedModel",
    "ModelKind",
    "ResolvedModel",
    "count_parameters",
    "kind_adapter",
    "load_model",
    "model_kind",
    "register_kind",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "size_on_disk_mb",
]
