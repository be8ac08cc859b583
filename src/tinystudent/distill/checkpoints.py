"""Resumable checkpoints and the best model, written so a killed run loses nothing.

A resumable checkpoint holds the trainable weights (safetensors), the optimizer, scheduler and
gradient-scaler states, every RNG state and the loop's position. It is written to a temporary
folder and renamed into place, and `LATEST` is updated last, so its content always names a
complete checkpoint. Optimizer state is our own file, saved with `torch.save` and read back with
`weights_only=True`; model weights are only ever safetensors.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tinystudent.folders import make_folder, remove_made

LATEST = "LATEST"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters, by name (tied weights once), as contiguous CPU tensors."""
    return {name: p.detach().to("cpu").contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(
            f"{path} does not match this student (missing {missing}, unexpected {extra}); "
            "was it written by another model or method?"
        )
    model.load_state_dict(state, strict=False)


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Torch RNG states as tensors; Python's and NumPy's as JSON-ready values."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{index}"] = state
    py_version, py_state, py_gauss = random.getstate()
    np_state: tuple = np.random.get_state()  # type: ignore[assignment]  # the legacy tuple form
    plain = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    scaler,
    loop_state: dict,
    keep: int,
    rank: int = 0,
    is_main: bool = True,
) -> Path:
    """Write checkpoint `step-N` under root and point LATEST at it; keep the newest `keep`.

    Every process writes its own RNG file; the main process writes everything else.
    """
    if is_main and not root.exists():
        make_folder(root)
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    tensors, plain = rng_state()
    if is_main:
        remove_made(tmp, "loop_state.json")
        make_folder(tmp)
    _barrier()
    torch.save(tensors, tmp / f"rng-{rank}.pt")
    _write_json(tmp / f"rng-{rank}.json", plain)
    _barrier()
    if is_main:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
            tmp / "optimizer.pt",
        )
        _write_json(tmp / "loop_state.json", loop_state)
        remove_made(final, "loop_state.json")
        tmp.rename(final)
        (root / (LATEST + ".tmp")).write_text(final.name)
        os.replace(root / (LATEST + ".tmp"), root / LATEST)
        for old in sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
            remove_made(old, "loop_state.json")
    _barrier()
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "loop_state.json").exists() else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, scaler, rank: int = 0) -> dict:
    """Restore weights, optimizer, scheduler, scaler and RNG states; returns the loop state."""
    load_trainable(model, path / "trainable.safetensors")
    saved = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    rng_file = path / f"rng-{rank}.pt"
    if not rng_file.exists():  # resumed with more processes than saved it
        rng_file = path / "rng-0.pt"
    tensors = torch.load(rng_file, weights_only=True)
    set_rng_state(tensors, json.loads(rng_file.with_suffix(".json").read_text()))
    return json.loads((path / "loop_state.json").read_text())


def save_best(model: torch.nn.Module, tokenizer, out_dir: Path, is_lora: bool, info: dict) -> None:
    """Save the best model so far: a plain safetensors folder, or the LoRA adapter folder."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    remove_made(tmp, "training.json")
    make_folder(tmp)
    model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]  # a transformers or peft model
    tokenizer.save_pretrained(tmp)
    _write_json(tmp / "training.json", info)
    remove_made(out_dir, "training.json")
    tmp.rename(out_dir)


def load_best(model: torch.nn.Module, best_dir: Path, is_lora: bool) -> None:
    """Put the best checkpoint's weights back into the model being trained."""
    if is_lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(best_dir / "adapter_model.safetensors")))
        return
    state = {}
    for file in sorted(best_dir.glob("*.safetensors")):
        state.update(load_file(str(file)))
    result = model.load_state_dict(state, strict=False)
    tied = {name for name, p in model.named_parameters(remove_duplicate=False)} - {
        name for name, p in model.named_parameters()
    }
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{best_dir} does not fit the student (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
