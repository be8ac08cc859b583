"""`tinystudent serve`: an OpenAI-compatible server for any local model (teachers and students)."""

from __future__ import annotations

from typing import Optional

import typer

from tinystudent.commands.app import app, friendly_errors
from tinystudent.log import quiet_libraries


@app.command("serve")
@friendly_errors
def serve_command(
    model: str = typer.Argument(..., help="Hub id, local model folder (a trained student) or GGUF file."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on (1 to 65535)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16."),
    served_model_name: Optional[str] = typer.Option(None, help="The name clients use [default: MODEL]."),
    max_batch_size: int = typer.Option(16, min=1, help="Most prompts run together in one batch."),
    batch_wait_ms: float = typer.Option(
        5.0, min=0, help="How long the first request of a batch waits for others to join it."
    ),
    api_key_env: Optional[str] = typer.Option(
        None, help="Require the API key held by this environment variable (its name, not the key)."
    ),
    max_body_mb: float = typer.Option(
        8.0,
        min=0.001,
        help="Largest request body accepted, in MiB; a larger one is answered 413 without being read.",
    ),
    trust_remote_code: bool = typer.Option(False, help="Run the model repository's own code."),
) -> None:
    """Serve a model over HTTP as OpenAI does: /v1/models, /v1/completions (with echo + logprobs for
    choice scoring) and /v1/chat/completions. Concurrent requests are batched. Bad requests are
    refused one by one (400, or 413 for a body over --max-body-mb) and never stop the server;
    /health answers 503 if its engine has stopped."""
    quiet_libraries()
    from tinystudent.serve import run_server

    run_server(
        model,
        host=host,
        port=port,
        device=device,
        dtype=dtype,
        served_name=served_model_name,
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
        api_key_env=api_key_env,
        trust_remote_code=trust_remote_code,
        max_body_bytes=max(int(max_body_mb * 2**20), 1),
    )
