"""The settings of a local teacher and of one behind a server, checked by `make_teacher`.

This module imports no model code: `tinystudent teach` builds its options from these fields (name,
type, default, constraint and description written once, here) every time the command line starts.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class LocalSettings(BaseModel):
    """Settings of a local teacher (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(8, ge=1, description="Prompts per batch (local teachers).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps (local teachers).")
    dtype: str = Field("auto", description="auto, float32, bfloat16, float16 (local teachers).")
    chat: Optional[bool] = Field(
        None, description="Use the chat template [default: when the tokenizer has one] (local teachers)."
    )
    engine: Literal["transformers", "llamacpp"] = Field(
        "transformers",
        description="transformers, or llamacpp for a GGUF teacher (pip install 'tinystudent[llamacpp]'; "
        "local teachers).",
    )
    kind: Optional[str] = Field(
        None, description="The model kind to load the teacher as, one that writes text [default: from its config]."
    )
    revision: Optional[str] = Field(None, description="The Hub revision (branch, tag or commit) of the model.")
    trust_remote_code: bool = Field(False, description="Run the model repository's own code.")

    @field_validator("kind")
    @classmethod
    def _a_kind_that_generates(cls, kind: Optional[str]) -> Optional[str]:
        if kind is None:
            return None
        from tinystudent.models.kinds import kind_adapter, known_kinds  # torch: only when a kind is named

        writers = [name for name in known_kinds() if kind_adapter(name).generates]
        if kind not in writers:
            raise ValueError(f"a teacher writes text: its kind must be one of {writers}, got {kind!r}")
        return kind


class HttpSettings(BaseModel):
    """Settings of a teacher behind an OpenAI-compatible server (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="Server endpoint for generation: chat or completions."
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once per server (server teachers).")
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for one server answer.")
    max_retries: int = Field(4, ge=0, description="Retries after connection errors, timeouts, 429, 5xx.")
    backoff: float = Field(0.5, ge=0, description="First retry delay in seconds, doubled each retry.")
    identity: Optional[str] = Field(
        None,
        description="Cache identity of a server teacher [default: base URL and model name; with several "
        "servers: model name and the weights they report].",
    )
    echo_max_tokens: int = Field(
        1, ge=0, description="max_tokens sent with scoring requests (the token generated is ignored)."
    )
    cooldown: float = Field(30.0, gt=0, description="Seconds a failing server stays out of rotation.")


def validated(schema: type[BaseModel], settings: dict, where: str) -> dict:
    """`settings` checked against `schema`, its defaults filled in; a bad or unknown key is one
    ValueError naming `where`, every problem and the keys allowed."""
    try:
        return schema(**settings).model_dump()
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{where} settings: {problems} (allowed: {sorted(schema.model_fields)})") from None
