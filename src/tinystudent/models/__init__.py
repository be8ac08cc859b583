"""Models: loading by Hub id, folder or GGUF file, offline copies, parameter counts."""

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
    "ResolvedModel",
    "count_parameters",
    "load_model",
    "model_kind",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "size_on_disk_mb",
]
