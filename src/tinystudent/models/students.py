"""Students of any size: pretrained, scaled down from a pretrained model, or freshly initialised.

A scaled-down student is a copy of a pretrained model that keeps a chosen subset of its layers
with their weights copied, everything else (embeddings, final norm, output head, classifier)
unchanged, so one pretrained model yields a ladder of sizes (DistilBERT-style layer selection,
Sanh et al. 2019; Sun et al. 2019). It is saved as a normal safetensors folder that
`load_model` reads like any other, with a `student.json` manifest that says where it came from.

Width pruning narrows every kept layer's feed-forward block instead (or as well): it keeps the
`mlp_width` fraction of the hidden units with the largest weight magnitude (the product of each
unit's input-row and output-column norms, the structured magnitude criterion of LLM-Pruner-style
pruning without data), so depth and width cuts of one model can be compared on one curve.

Layer stacks are found by structure, not by a table of names: a stack is a `ModuleList` whose
members are all of one class named `...Layer` or `...Block` (Llama/Qwen `model.layers`, GPT-2
`transformer.h`, GPT-NeoX `gpt_neox.layers`, T5 `encoder.block`/`decoder.block`, BERT
`encoder.layer`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, cast

import torch

from tinystudent.folders import make_folder, remove_made
from tinystudent.log import info
from tinystudent.models.kinds import kind_adapter, known_kinds
from tinystudent.models.loading import model_kind, resolve_model
from tinystudent.models.params import count_parameters

MANIFEST = "student.json"
KEEP_FORMS = "first:N, last:N, every:K, spread:N, or layer indices such as 0,4,29"


def auto_class(kind: str):
    """The transformers Auto class that builds a model of `kind` (causal, seq2seq, encoder)."""
    if kind not in known_kinds():
        raise ValueError(f"student kind must be one of {sorted(known_kinds())}, got {kind!r}")
    return kind_adapter(kind).auto_class()


def parse_keep(keep: str | list[int], num_layers: int) -> list[int]:
    """Which layers of a stack of `num_layers` to keep, in increasing order.

    Args:
        keep: `first:N` (layers 0..N-1), `last:N`, `every:K` (0, K, 2K, ...), `spread:N` (N layers
            evenly spaced from the first to the last), or explicit indices as a list or a
            comma-separated string (`0,4,29`; negative indices count from the end).
        num_layers: the stack's depth.
    """
    if isinstance(keep, str) and ":" in keep:
        form, _, raw = keep.partition(":")
        if not raw.strip().isdigit() or int(raw) < 1:
            raise ValueError(f"keep {keep!r}: the number after ':' must be a positive integer ({KEEP_FORMS})")
        n = int(raw)
        if form == "every":
            layers = list(range(0, num_layers, n))
        elif form in ("first", "last", "spread"):
            if n > num_layers:
                raise ValueError(f"keep {keep!r}: the model has only {num_layers} layers")
            if form == "first":
                layers = list(range(n))
            elif form == "last":
                layers = list(range(num_layers - n, num_layers))
            else:
                layers = sorted({round(i * (num_layers - 1) / max(n - 1, 1)) for i in range(n)})
        else:
            raise ValueError(f"keep {keep!r}: unknown form {form!r} ({KEEP_FORMS})")
    else:
        if isinstance(keep, str):
            try:
                keep = [int(part) for part in keep.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"keep {keep!r}: expected {KEEP_FORMS}") from None
        layers = [i + num_layers if i < 0 else i for i in keep]
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"keep {keep!r}: layer(s) {bad} outside 0..{num_layers - 1}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"keep {keep!r}: a layer is listed twice")
        layers = sorted(layers)
    if not layers:
        raise ValueError(f"keep {keep!r} keeps no layer")
    return layers


def layer_stacks(model: torch.nn.Module) -> dict[str, int]:
    """The model's layer stacks: dotted module path -> depth (outermost stacks only)."""
    stacks: dict[str, int] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 1:
            continue
        if any(name.startswith(prefix + ".") for prefix in stacks):
            continue  # a list inside a layer (T5's sub-layers), not a stack of layers
        classes = {type(child).__name__ for child in module}
        if len(classes) == 1 and re.search(r"(Layer|Block)$", classes.pop()):
            stacks[name] = len(module)
    return stacks


def _depth_keys(config, stack: str) -> list[str]:
    """Config attributes that hold the depth of `stack` (encoder and decoder differ in T5/BART)."""
    if getattr(config, "is_encoder_decoder", False):
        side = "decoder" if "decoder" in stack.split(".") else "encoder"
        candidates = {"encoder": ["encoder_layers", "num_layers"], "decoder": ["decoder_layers", "num_decoder_layers"]}[
            side
        ]
        return [key for key in candidates if key in config.to_dict()][:1]
    return ["num_hidden_layers"]


def _scaled_config(config, stacks: dict[str, int], kept: dict[str, list[int]]):
    """A copy of `config` with each stack's depth and per-layer lists cut to the kept layers."""
    new = config.__class__.from_dict(config.to_dict())
    for stack, layers in kept.items():
        old_depth = stacks[stack]
        keys = _depth_keys(config, stack)
        if not keys:
            raise ValueError(f"cannot tell which config field holds the depth of {stack}")
        for key in keys:
            setattr(new, key, len(layers))
        # Per-layer settings (Qwen2/Gemma `layer_types`, ...) follow their layers.
        for key, value in config.to_dict().items():
            if isinstance(value, list) and len(value) == old_depth and key.startswith("layer"):
                setattr(new, key, [value[i] for i in layers])
    return new


def _mapped_state(source_state: dict, new_keys: set[str], kept: dict[str, list[int]]) -> dict:
    """The new model's state dict, each kept layer's tensors taken from its source layer.

    Parameters only a stack's first layer has (T5's relative position bias, which every layer
    uses) come from the source's first layer when that layer is not kept.
    """
    patterns = {stack: re.compile(rf"^{re.escape(stack)}\.(\d+)\.(.*)$") for stack in kept}
    state, missing = {}, []
    for key in sorted(new_keys):
        source_key = key
        for stack, pattern in patterns.items():
            match = pattern.match(key)
            if match:
                index, rest = int(match.group(1)), match.group(2)
                source_key = f"{stack}.{kept[stack][index]}.{rest}"
                if source_key not in source_state:
                    source_key = f"{stack}.0.{rest}"
                break
        if source_key in source_state:
            state[key] = source_state[source_key].clone()
        else:
            missing.append(key)
    if missing:
        raise ValueError(
            f"scale_down could not find source weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    return state


def _normalise_keep(keep, stacks: dict[str, int]) -> dict[str, list[int]]:
    if isinstance(keep, dict):
        unknown = set(keep) - set(stacks)
        if unknown:
            raise ValueError(f"keep names stacks {sorted(unknown)}; this model has {sorted(stacks)}")
        return {stack: parse_keep(spec, stacks[stack]) for stack, spec in keep.items()}
    return {stack: parse_keep(keep, depth) for stack, depth in stacks.items()}


def _copy_tokenizer(source: Path, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source).save_pretrained(out_dir)
    if (source / "generation_config.json").exists():
        shutil.copy(source / "generation_config.json", out_dir / "generation_config.json")


def _set_labels(config, labels: list[str] | None) -> None:
    """A classifier's labels in its config, so its head has one output per label."""
    if not labels or len(set(labels)) != len(labels) or len(labels) < 2:
        raise ValueError(
            f"a classifier needs the task's choices as its labels (at least two, each once), got {labels!r}"
        )
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}


def _reuse_existing(out_dir: Path, manifest: dict) -> bool:
    """True when out_dir already holds exactly this student (nothing is built twice)."""
    path = out_dir / MANIFEST
    if not path.exists():
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(
                f"{out_dir} exists and is not a tinystudent student folder; choose an empty or new folder"
            )
        return False
    found = json.loads(path.read_text())
    fields = ("source_identity", "kept", "kind", "mlp_width", "labels")
    same = {k: found.get(k) for k in fields} == {k: manifest.get(k) for k in fields}
    if not same:
        raise FileExistsError(
            f"{out_dir} holds a different student ({found.get('source')} keeping "
            f"{found.get('kept')}); choose another folder or delete it"
        )
    return True


def _write_atomically(model, source_path: Path | None, out_dir: Path, manifest: dict) -> Path:
    """Save model, tokenizer and manifest to a temporary folder, then rename it into place."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    remove_made(tmp, MANIFEST)
    make_folder(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    if source_path is not None:
        _copy_tokenizer(source_path, tmp)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    remove_made(out_dir, MANIFEST)
    tmp.rename(out_dir)
    return out_dir


WIDTH_KEYS = ("intermediate_size", "d_ff")  # the feed-forward width in Llama/Qwen/BERT and T5 configs


def _width_key(config) -> str:
    for key in WIDTH_KEYS:
        if isinstance(getattr(config, key, None), int):
            return key
    raise ValueError(
        f"mlp_width: a {config.model_type} config has none of {WIDTH_KEYS}; "
        "width pruning supports Llama/Qwen/Mistral-, BERT- and T5-style models"
    )


def _mlp_linears(layer: torch.nn.Module, width: int) -> tuple[list[str], list[str]]:
    """Names (inside `layer`) of the feed-forward projections into (`width` outputs) and out of
    (`width` inputs) the hidden units."""
    into, out_of = [], []
    for name, module in layer.named_modules():
        if isinstance(module, torch.nn.Linear):
            if module.out_features == width and module.in_features != width:
                into.append(name)
            elif module.in_features == width and module.out_features != width:
                out_of.append(name)
    return into, out_of


def narrow_state(model: torch.nn.Module, stacks: dict[str, int], width: int, keep_units: int) -> dict:
    """`model`'s state dict with each layer's feed-forward block cut to its `keep_units` hidden
    units of largest magnitude (kept in their order)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for stack in stacks:
        # `layer_stacks` names ModuleLists only.
        for index, layer in enumerate(cast(torch.nn.ModuleList, model.get_submodule(stack))):
            into, out_of = _mlp_linears(layer, width)
            if not into or not out_of:
                raise ValueError(f"mlp_width: found no feed-forward projections of width {width} in {stack}.{index}")
            prefix = f"{stack}.{index}."
            score = torch.ones(width)
            for name in into:
                score = score * state[f"{prefix}{name}.weight"].float().norm(dim=1)
            for name in out_of:
                score = score * state[f"{prefix}{name}.weight"].float().norm(dim=0)
            units = torch.topk(score, keep_units).indices.sort().values
            for name in into:
                state[f"{prefix}{name}.weight"] = state[f"{prefix}{name}.weight"][units].clone()
                if f"{prefix}{name}.bias" in state:
                    state[f"{prefix}{name}.bias"] = state[f"{prefix}{name}.bias"][units].clone()
            for name in out_of:
                state[f"{prefix}{name}.weight"] = state[f"{prefix}{name}.weight"][:, units].clone()
    return state


def scale_down(
    source: str,
    keep: str | list[int] | dict | None,
    out_dir: Path,
    kind: str | None = None,
    mlp_width: float | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Save a smaller copy of `source` that keeps only some of its layers, or a narrower
    feed-forward block in each, or both; weights copied. With every layer kept it saves `source`
    as another kind (an encoder as a `classifier`).

    Args:
        source: Hub id, local folder or GGUF file of a pretrained model.
        keep: which layers to keep (see `parse_keep`): one spec applied to every layer stack
            (T5's encoder and decoder alike), or a dict from stack path (`encoder.block`) to spec;
            None keeps every layer.
        out_dir: where the new model folder goes; reused when it already holds this student.
        kind: `causal`, `seq2seq` or `encoder`; detected from the config by default.
        mlp_width: the fraction (0 < f < 1) of each feed-forward block's hidden units to keep,
            those of largest weight magnitude; None keeps them all.
        labels: a `classifier`'s labels (the task's choices, in order); its head is new.

    Returns:
        out_dir, a safetensors model folder with the source's tokenizer and a `student.json`.
    """
    from transformers import AutoConfig

    out_dir = Path(out_dir)
    resolved = resolve_model(source)
    config = AutoConfig.from_pretrained(resolved.path)
    kind = kind or model_kind(config)
    if kind == "classifier":
        _set_labels(config, labels)
    torch.manual_seed(0)  # heads the checkpoint lacks (a new classifier) start the same each time
    dtype = getattr(config, "dtype", None) or torch.float32
    # A classifier's head is new: one the source has for other outputs (a cross-encoder's) is left out.
    new_head = {"ignore_mismatched_sizes": True} if kind == "classifier" else {}
    original = auto_class(kind).from_pretrained(
        resolved.path, config=config, dtype=dtype, use_safetensors=True, **new_head
    )
    stacks = layer_stacks(original)
    if not stacks:
        raise ValueError(f"{source}: found no stack of layers to cut (a ModuleList of ...Layer/...Block)")
    if mlp_width is not None and not 0 < mlp_width < 1:
        raise ValueError(f"mlp_width must be a fraction between 0 and 1 (exclusive), got {mlp_width}")
    kept = (
        _normalise_keep(keep, stacks)
        if keep is not None
        else {stack: list(range(depth)) for stack, depth in stacks.items()}
    )
    manifest: dict[str, Any] = {
        "source": source,
        "source_identity": resolved.identity,
        "kind": kind,
        "kept": kept,
        "source_layers": stacks,
        "how": "scale_down",
        "mlp_width": mlp_width,
        **({"labels": list(labels or [])} if kind == "classifier" else {}),
    }
    if _reuse_existing(out_dir, manifest):
        return out_dir
    new_config = _scaled_config(config, stacks, kept)
    smaller = auto_class(kind).from_config(new_config, dtype=dtype)
    smaller.load_state_dict(_mapped_state(original.state_dict(), set(smaller.state_dict()), kept), strict=True)
    what = f"{', '.join(f'{s}: {len(v)}/{stacks[s]}' for s, v in kept.items())} layers"
    if mlp_width is not None:
        key = _width_key(new_config)
        width = getattr(new_config, key)
        units = max(1, round(width * mlp_width))
        state = narrow_state(smaller, layer_stacks(smaller), width, units)
        setattr(new_config, key, units)
        smaller = auto_class(kind).from_config(new_config, dtype=dtype)
        smaller.load_state_dict(state, strict=True)
        manifest["mlp_units"] = [width, units]
        what += f", feed-forward {units}/{width} units"
    counts = count_parameters(smaller)
    manifest["params"] = counts
    info(f"scaled {source} down to {what}: {counts['total']:,} parameters ({counts['non_embedding']:,} non-embedding)")
    return _write_atomically(smaller, resolved.path, out_dir, manifest)


def fresh_student(
    config, out_dir: Path, tokenizer_from: str | None = None, kind: str | None = None, seed: int = 0, **overrides
) -> Path:
    """Save a randomly initialised student built from a config, for tests and ablations.

    Args:
        config: a transformers `PretrainedConfig`, a dict with `model_type`, or a model name
            whose architecture is copied (its weights are not).
        out_dir: where the folder goes.
        tokenizer_from: model whose tokenizer is copied (default: `config` when it is a name).
        kind: `causal`, `seq2seq` or `encoder`; detected from the config by default.
        seed: seed of the random initialisation.
        overrides: config fields to change, such as `num_hidden_layers=4`.
    """
    from transformers import AutoConfig, PretrainedConfig

    out_dir = Path(out_dir)
    if isinstance(config, str):
        resolved = resolve_model(config)
        tokenizer_from = tokenizer_from or config
        config = AutoConfig.from_pretrained(resolved.path)
    elif isinstance(config, dict):
        if "model_type" not in config:
            raise ValueError("a config dict needs a model_type (llama, qwen2, gpt2, t5, bert, ...)")
        fields = dict(config)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    elif not isinstance(config, PretrainedConfig):
        raise TypeError(f"config must be a PretrainedConfig, a dict or a model name, got {type(config)}")
    config = config.__class__.from_dict({**config.to_dict(), **overrides})
    kind = kind or model_kind(config)
    torch.manual_seed(seed)
    model = auto_class(kind).from_config(config)
    tokenizer_path = resolve_model(tokenizer_from).path if tokenizer_from else None
    if tokenizer_path is not None:
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(tokenizer_path))
        if vocab > model.get_input_embeddings().num_embeddings:
            raise ValueError(
                f"the tokenizer of {tokenizer_from} has {vocab} tokens but the config's "
                f"vocab_size is {model.get_input_embeddings().num_embeddings}"
            )
    manifest = {
        "how": "fresh",
        "seed": seed,
        "kind": kind,
        "tokenizer_from": tokenizer_from,
        "overrides": overrides,
        "params": count_parameters(model),
    }
    return _write_atomically(model, tokenizer_path, out_dir, manifest)


def student_ladder(source: str, specs: list[str | list[int]], root: Path) -> list[Path]:
    """Scaled-down students of `source`, one per keep spec, in folders under `root`."""
    root = Path(root)
    paths = []
    for spec in specs:
        label = spec if isinstance(spec, str) else ",".join(map(str, spec))
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(source).name}-{label}").strip("-")
        paths.append(scale_down(source, spec, root / slug))
    return paths
