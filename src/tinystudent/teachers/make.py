"""`make_teacher`: a teacher by model name, served (OpenAI-compatible) or loaded here."""

from __future__ import annotations

from typing import Sequence

from tinystudent.models import load_model
from tinystudent.models.loading import gguf_file
from tinystudent.teachers.base import Teacher
from tinystudent.teachers.http import HttpTeacher
from tinystudent.teachers.llamacpp import LlamaCppTeacher
from tinystudent.teachers.local import LocalTeacher
from tinystudent.teachers.settings import HttpSettings, LocalSettings, validated


def make_teacher(
    name: str, base_url: str | Sequence[str] | None = None, api_key_env: str | None = None, **settings
) -> Teacher:
    """A teacher by model name: served at `base_url` (OpenAI-compatible) or loaded here.

    Args:
        name: local: a Hub id, folder or GGUF file; HTTP: the model name the server knows.
        base_url: the server's URL (`http://host:port/v1`), or a list of servers of the same model
            that share the requests (see `HttpTeacher` for their cache identity); None loads the
            model locally.
        api_key_env: name of the environment variable holding the server's API key.
        settings: local: device, dtype, batch_size, chat, kind, revision, trust_remote_code,
            engine (`transformers`, or `llamacpp` for a GGUF file: `teachers.llamacpp`);
            HTTP: endpoint, concurrency (per server), timeout, max_retries, backoff, identity,
            echo_max_tokens, cooldown (`teachers.settings`).
    """
    if base_url is not None and (base_url or not isinstance(base_url, str)):  # HttpTeacher refuses []
        return HttpTeacher(name, base_url, api_key_env=api_key_env, **validated(HttpSettings, settings, "HTTP teacher"))
    if api_key_env:
        raise ValueError("api_key_env is for a teacher behind a server: give base_url too")

    options = validated(LocalSettings, settings, "local teacher")
    if options["engine"] == "llamacpp":
        path, identity = gguf_file(name)
        return LlamaCppTeacher(path, identity, chat=options["chat"])
    loaded = load_model(
        name,
        device=options["device"],
        dtype=options["dtype"],
        kind=options["kind"],
        trust_remote_code=options["trust_remote_code"],
        revision=options["revision"],
    )
    return LocalTeacher(loaded, batch_size=options["batch_size"], chat=options["chat"])
