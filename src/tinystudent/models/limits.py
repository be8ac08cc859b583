"""How long an input a model takes, from its config and its tokenizer (below the model kinds, which
ask it, and loading, which asks the kinds)."""

from __future__ import annotations


def context_length(model) -> int | None:
    """The most positions the model can attend to, when its config says (T5's is unbounded)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# The input length a model falls back to when neither its positions nor its tokenizer limit it
# (T5 has relative positions and no hard limit; it was trained on inputs of this length).
DEFAULT_INPUT_LIMIT = 512


def tokenizer_limit(tokenizer) -> int | None:
    """The tokenizer's `model_max_length`, when it states a real one (not its huge placeholder)."""
    declared = getattr(tokenizer, "model_max_length", None)
    return declared if isinstance(declared, int) and 0 < declared < 1_000_000 else None
