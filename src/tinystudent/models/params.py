"""Parameter counts and size on disk: one definition for every model we compare."""

from __future__ import annotations

from pathlib import Path

import torch


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total, trainable, embedding and non-embedding parameters.

    Embedding parameters are those of every `nn.Embedding` (token and position tables) plus an
    output projection that is not tied to the input table; tied weights are counted once.
    """
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    embedding_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            embedding_ids.add(id(module.weight))
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None and getattr(output, "weight", None) is not None:
        embedding_ids.add(id(output.weight))
    embedding = sum(p.numel() for p in model.parameters() if id(p) in embedding_ids)
    # parameters() yields a tied weight once, so the sum above counts it once too.
    return {"total": total, "trainable": trainable, "embedding": embedding, "non_embedding": total - embedding}


def size_on_disk_mb(path: Path) -> float:
    """Megabytes of weight files (safetensors, GGUF, bin) in a model folder."""
    weights = [p for p in Path(path).rglob("*") if p.suffix in (".safetensors", ".gguf", ".bin")]
    return round(sum(p.stat().st_size for p in weights) / 2**20, 2)
