"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") through PEFT.

PEFT silently skips target names that match nothing once at least one name matches, and users
lost half their trainable parameters that way; here every target must match a module.
"""

from __future__ import annotations

import torch

from tinystudent.log import info
from tinystudent.models.kinds import ModelKind, kind_adapter


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct last name parts of the model's linear layers (`q_proj`, `c_attn`, ...)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
    }
    return sorted(names)


def check_targets(model: torch.nn.Module, targets: str | list[str]) -> None:
    """Every target must match a module by full name or by its last name parts (PEFT's rule)."""
    if targets == "all-linear":
        return
    if isinstance(targets, str):
        targets = [targets]
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise ValueError(
            f"LoRA target module(s) {unmatched} match nothing in {type(model).__name__}; "
            f"its linear layers are named {linear_module_names(model)} "
            "(or use all-linear)"
        )


def apply_lora(
    model: torch.nn.Module,
    kind: str | ModelKind,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: str | list[str],
) -> torch.nn.Module:
    """Wrap `model` with LoRA adapters; only the adapters (and a new classifier head) train.

    Args:
        kind: `causal`, `seq2seq` or `encoder`, or its `ModelKind`; an encoder's multiple-choice
            classifier is freshly initialised, so it trains in full alongside the adapters
            (`ModelKind.lora_modules_to_save`).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    check_targets(model, target_modules)
    adapter = kind_adapter(kind)
    task_type = TaskType[adapter.peft_task_type] if adapter.peft_task_type else None
    modules_to_save = adapter.lora_modules_to_save(model)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; it only divides by r
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    wrapped = get_peft_model(model, config)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    info(f"LoRA r={rank} alpha={alpha} on {target_modules}: {trainable:,} trainable of {total:,} parameters")
    return wrapped


def save_merged(peft_model, tokenizer, out_dir) -> None:
    """Save a plain model with the adapter merged in, leaving `peft_model` unmerged."""
    import copy

    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
