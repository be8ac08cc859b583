"""`tinystudent serve`: an OpenAI-compatible server (FastAPI on uvicorn) for any local model.

Endpoints: `GET /v1/models`, `POST /v1/completions` (prompt as text, list of texts or token ids;
max_tokens, temperature, top_p, seed, stop, logprobs, echo), `POST /v1/chat/completions` (the
model's chat template; logprobs/top_logprobs), `GET /health` and `GET /stats`.

`echo` with `logprobs` returns every prompt token's log-probability as vLLM does
(`logprobs.tokens`, `token_logprobs` with None for the first token, `top_logprobs`,
`text_offset` in characters of the returned text); with `max_tokens` 0 nothing is generated. This
is how a client scores a multiple-choice answer without a local tokenizer.

Concurrent requests are batched: one worker thread owns the model and all tokenizer calls, takes
every request that arrived within `batch_wait_ms` of the first (up to `max_batch_size` prompts),
and runs their prompts together, each with its own token limit, stop strings and seed.
"""

from __future__ import annotations

import asyncio
import os
import queue
import secrets
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tinystudent.evaluation.generative import generate_in_batches
from tinystudent.models.generation import RowParams, eos_ids, sample_token
from tinystudent.models.kinds import ModelKind
from tinystudent.models.loading import LoadedModel
from tinystudent.models.packed_linears import packed_linears
from tinystudent.teachers.engine import TokenLogprobs, token_logprobs


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error answer."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class Sampling(BaseModel):
    """Fields common to both endpoints; unknown fields are accepted and ignored, as by vLLM."""

    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: int = 1
    stream: bool = False


class CompletionRequest(Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=20)


class ChatRequest(Sampling):
    messages: list[dict[str, Any]]
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    max_completion_tokens: Optional[int] = Field(None, ge=0)


@dataclass(eq=False)  # rows are compared by identity
class Row:
    """One prompt to run, and what running it produced."""

    ids: list[int]
    params: RowParams
    top_n: Optional[int]  # None: no log-probabilities
    completion_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    scored: Optional[TokenLogprobs] = None  # over ids + completion_ids


@dataclass
class Job:
    """One HTTP request on its way through the worker."""

    endpoint: str  # "completions" | "chat"
    request: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    rows: list[Row] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the prompt texts, for echo

    @property
    def size(self) -> int:
        prompt = getattr(self.request, "prompt", "")
        return len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1


class Engine:
    """The worker thread that owns the model and batches requests."""

    def __init__(self, loaded: LoadedModel, max_batch_size: int = 16, batch_wait_ms: float = 5.0):
        self.loaded, self.max_batch_size, self.batch_wait_s = loaded, max_batch_size, batch_wait_ms / 1000
        self.tokenizer, self.kind, self.adapter = loaded.tokenizer, loaded.kind, loaded.adapter
        self.max_positions = loaded.adapter.position_limit(loaded.model)
        self.stop_ids = eos_ids(loaded.model, loaded.tokenizer)
        self.jobs: queue.Queue = queue.Queue()
        self.stats = {"requests": 0, "prompts": 0, "forward_batches": 0, "largest_batch": 0}
        self.thread = threading.Thread(target=self._loop, name="tinystudent-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    async def submit(self, endpoint: str, request) -> dict:
        loop = asyncio.get_running_loop()
        job = Job(endpoint, request, loop, loop.create_future())
        self.jobs.put(job)
        return await job.future

    # --- the worker ---------------------------------------------------------------------------

    def _collect(self) -> list[Job] | None:
        first = self.jobs.get()
        if first is None:
            return None
        jobs, deadline = [first], time.monotonic() + self.batch_wait_s
        while sum(j.size for j in jobs) < self.max_batch_size:
            try:
                job = self.jobs.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)
                break
            jobs.append(job)
        return jobs

    def _loop(self) -> None:
        with packed_linears(self.loaded.model, self.loaded.device):  # for the server's life, not per batch
            self._serve()

    def _serve(self) -> None:
        while (jobs := self._collect()) is not None:
            ready = []
            for job in jobs:
                try:
                    self._prepare(job)
                    ready.append(job)
                except RequestError as err:
                    self._settle(job, error=err)
            try:
                with torch.no_grad():
                    self._execute([row for job in ready for row in job.rows])
            except Exception as err:  # noqa: BLE001 - report to every waiting client, keep serving
                for job in ready:
                    self._settle(job, error=RequestError(f"the model failed: {err}", 500, "server_error"))
                continue
            for job in ready:
                try:
                    self._settle(job, result=self._respond(job))
                except Exception as err:  # noqa: BLE001
                    self._settle(job, error=RequestError(f"could not build the answer: {err}", 500, "server_error"))

    def _settle(self, job: Job, result: dict | None = None, error: Exception | None = None) -> None:
        def finish():
            if job.future.done():  # the client went away
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        job.loop.call_soon_threadsafe(finish)

    # --- requests to rows --------------------------------------------------------------------

    def _params(self, request, max_tokens: int, index: int) -> RowParams:
        if request.n != 1:
            raise RequestError("n must be 1 (ask again with another seed for more samples)")
        if request.stream:
            raise RequestError("stream is not supported; send stream=false")
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        seed = request.seed if request.seed is not None else secrets.randbits(62)
        return RowParams(max_tokens, request.temperature, request.top_p, seed, stop)

    def _check_length(self, ids: list[int], max_tokens: int) -> None:
        if not ids:
            raise RequestError("the prompt is empty")
        if self.max_positions and len(ids) + max_tokens > self.max_positions:
            raise RequestError(
                f"this model's maximum context length is {self.max_positions} tokens; the "
                f"prompt has {len(ids)} tokens and max_tokens is {max_tokens}"
            )

    def _prepare(self, job: Job) -> None:
        self.stats["requests"] += 1
        request = job.request
        if job.endpoint == "chat":
            if not getattr(self.tokenizer, "chat_template", None):
                raise RequestError(f"{self.loaded.name} has no chat template; use /v1/completions")
            messages = [
                {"role": m.get("role", "user"), "content": _content_text(m.get("content"))} for m in request.messages
            ]
            # A str with tokenize=False; transformers types the return as every output it can have.
            chat_text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            texts: list[str] = [chat_text]  # type: ignore[list-item]
            id_rows = [self.adapter.encode_prompt(self.tokenizer, texts[0])]
            max_tokens = next((m for m in (request.max_completion_tokens, request.max_tokens) if m is not None), 256)
            top_n = (request.top_logprobs or 0) if request.logprobs else None
        else:
            prompts = request.prompt if isinstance(request.prompt, list) else [request.prompt]
            if prompts and isinstance(prompts[0], int):
                prompts = [prompts]
            if not prompts:
                raise RequestError("prompt is empty")
            id_rows = [
                list(p) if isinstance(p, list) else self.adapter.encode_prompt(self.tokenizer, p) for p in prompts
            ]
            # decode gives a str for one row of ids; transformers types it str | list[str].
            texts = [self.tokenizer.decode(p) if isinstance(p, list) else p for p in prompts]  # type: ignore[misc]
            max_tokens = 16 if request.max_tokens is None else request.max_tokens
            top_n = request.logprobs
        if top_n is not None and not self.adapter.decoder_only:
            raise RequestError(f"logprobs need a causal model; this server runs a {self.kind} model")
        for ids in id_rows:
            self._check_length(ids, max_tokens)
        job.texts = texts
        job.rows = [Row(ids, self._params(request, max_tokens, i), top_n) for i, ids in enumerate(id_rows)]
        self.stats["prompts"] += len(job.rows)

    # --- running rows -------------------------------------------------------------------------

    def _count_batch(self, size: int) -> None:
        self.stats["forward_batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], size)

    def _execute(self, rows: list[Row]) -> None:
        # Prompt log-probabilities come from one pass of a decoder-only model; its next token too.
        prompt_pass = self.adapter.decoder_only
        one_pass = [
            r
            for r in rows
            if r.params.max_new_tokens == 0 or (r.top_n is not None and r.params.max_new_tokens == 1 and prompt_pass)
        ]
        generated = [r for r in rows if r not in one_pass]
        results = generate_in_batches(
            self.loaded.model,
            self.tokenizer,
            self.adapter,
            [r.ids for r in generated],
            [r.params for r in generated],
            self.max_batch_size,
            on_batch=lambda prompts, seconds: self._count_batch(prompts),
        )
        for index, out in results:
            row = generated[index]
            row.text, row.completion_ids, row.finish_reason = out.text, out.token_ids, out.finish_reason
        scored = [r for r in rows if r.top_n is not None and prompt_pass]
        if scored:
            self._count_batch(len(scored))
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            scored_results = token_logprobs(
                self.loaded.model,
                pad,
                [r.ids + r.completion_ids for r in scored],
                max(r.top_n for r in scored if r.top_n is not None),
            )
            for row, result in zip(scored, scored_results):
                row.scored = result
        for row in one_pass:
            if row.params.max_new_tokens == 1:
                self._one_more_token(row)
            else:
                row.finish_reason = "length"

    def _one_more_token(self, row: Row) -> None:
        """The next token from the prompt pass already made (echo + logprobs + max_tokens 1)."""
        scored = row.scored
        if scored is None:  # such a row asked for log-probabilities: it had its prompt pass
            raise RuntimeError("a row to finish from its prompt pass was not scored")
        next_logprobs = scored.next_logprobs
        if row.params.temperature > 0:
            generator = torch.Generator().manual_seed(row.params.seed % 2**63)
            token = sample_token(next_logprobs, row.params.temperature, row.params.top_p, generator)
        else:
            token = int(next_logprobs.argmax())
        if token in self.stop_ids:
            row.finish_reason = "stop"
            return
        row.completion_ids = [token]
        # decode gives a str for one row of ids; transformers types it str | list[str].
        row.text = self.tokenizer.decode([token], skip_special_tokens=True)  # type: ignore[assignment]
        scored.logprobs.append(float(next_logprobs[token]))
        top = next_logprobs.topk(row.top_n) if row.top_n else None
        scored.top.append(dict(zip(top.indices.tolist(), top.values.tolist())) if top else None)

    # --- answers ------------------------------------------------------------------------------

    def _respond(self, job: Job) -> dict:
        name, created = job.request.model or "", int(time.time())
        usage = {
            "prompt_tokens": sum(len(r.ids) for r in job.rows),
            "completion_tokens": sum(len(r.completion_ids) for r in job.rows),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if job.endpoint == "chat":
            row = job.rows[0]
            logprobs = {"content": self._chat_logprobs(row)} if row.top_n is not None else None
            choices = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": row.text},
                    "logprobs": logprobs,
                    "finish_reason": row.finish_reason,
                }
            ]
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": choices,
                "usage": usage,
            }
        choices = []
        for index, (row, prompt) in enumerate(zip(job.rows, job.texts)):
            echo = job.request.echo
            logprobs = self._completion_logprobs(row, prompt, echo) if row.top_n is not None else None
            choices.append(
                {
                    "index": index,
                    "text": (prompt if echo else "") + row.text,
                    "logprobs": logprobs,
                    "finish_reason": row.finish_reason,
                }
            )
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": choices,
            "usage": usage,
        }

    def _token_strings(self, ids: list[int]) -> list[str]:
        return self.tokenizer.batch_decode([[i] for i in ids])

    def _top(self, top: dict[int, float] | None, n: int | None) -> dict[str, float] | None:
        if top is None or not n:
            return None
        return dict(zip(self._token_strings(list(top)), top.values()))

    def _completion_logprobs(self, row: Row, prompt: str, echo: bool) -> dict:
        """vLLM's `logprobs` object; offsets are characters of the returned text."""
        start = 0 if echo else len(row.ids)
        ids = (row.ids + row.completion_ids)[start:]
        offsets = _prompt_offsets(self.tokenizer, self.adapter, prompt, row.ids) if echo else []
        base = len(prompt) if echo else 0
        offsets += [
            base + len(self.tokenizer.decode(row.completion_ids[:k], skip_special_tokens=True))
            for k in range(len(row.completion_ids))
        ]
        scored = row.scored
        if scored is None:  # rows that ask for log-probabilities are scored in _execute
            raise RuntimeError("a row that asked for log-probabilities was not scored")
        return {
            "tokens": self._token_strings(ids),
            "token_logprobs": scored.logprobs[start:],
            "top_logprobs": [self._top(t, row.top_n) for t in scored.top[start:]],
            "text_offset": offsets,
        }

    def _chat_logprobs(self, row: Row) -> list[dict]:
        start = len(row.ids)
        scored = row.scored
        if scored is None:  # rows that ask for log-probabilities are scored in _execute
            raise RuntimeError("a row that asked for log-probabilities was not scored")
        content = []
        for _, text, value, top in zip(
            row.completion_ids,
            self._token_strings(row.completion_ids),
            scored.logprobs[start:],
            scored.top[start:],
        ):
            tops = self._top(top, row.top_n) or {}
            content.append(
                {
                    "token": text,
                    "logprob": value,
                    "bytes": list(text.encode()),
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in tops.items()],
                }
            )
        return content


def _content_text(content) -> str:
    """A chat message's content: a string, or OpenAI's list of {type: text, text} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError("message content must be a string or a list of text parts")


def _prompt_offsets(tokenizer, adapter: ModelKind, text: str, ids: list[int]) -> list[int]:
    """Start character of each prompt token in `text` (0 for special tokens not in the text)."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(
            text, add_special_tokens=adapter.adds_special_tokens(tokenizer, text), return_offsets_mapping=True
        )
        if encoded["input_ids"] == ids:
            return [start for start, _ in encoded["offset_mapping"]]
    offsets, previous = [], 0
    for k in range(len(ids)):  # slow path: decode growing prefixes
        offsets.append(min(previous, len(text)))
        previous = len(tokenizer.decode(ids[: k + 1], skip_special_tokens=True))
    return offsets


def create_app(
    loaded: LoadedModel,
    served_name: str | None = None,
    max_batch_size: int = 16,
    batch_wait_ms: float = 5.0,
    api_key: str | None = None,
) -> FastAPI:
    """The FastAPI app serving `loaded` under `served_name` (default: its name)."""
    engine = Engine(loaded, max_batch_size, batch_wait_ms)
    names = {served_name or loaded.name, loaded.name, str(loaded.resolved.path)}
    public_name = served_name or loaded.name

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="tinystudent serve", lifespan=lifespan)
    app.state.engine = engine

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "missing or wrong API key", "authentication_error")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in err.errors())
        return error_response(400, problems)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError):
        return error_response(err.status, str(err), err.kind)

    def check_model(request: Sampling) -> None:
        if request.model is not None and request.model not in names:
            raise RequestError(
                f"the model {request.model!r} does not exist here; this server serves {public_name!r}",
                404,
                "not_found_error",
            )
        request.model = public_name

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        return dict(engine.stats)

    @app.get("/v1/models")
    async def models():
        card = {
            "id": public_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "tinystudent",
            "root": str(loaded.resolved.path),
            "max_model_len": engine.max_positions,
            "tinystudent": {"identity": loaded.resolved.identity, "kind": loaded.kind},
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        check_model(request)
        return await engine.submit("completions", request)

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest):
        check_model(request)
        return await engine.submit("chat", request)

    return app


def run_server(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    dtype: str = "auto",
    served_name: str | None = None,
    max_batch_size: int = 16,
    batch_wait_ms: float = 5.0,
    api_key_env: str | None = None,
    trust_remote_code: bool = False,
) -> None:
    """Load `model` and serve it until interrupted."""
    import uvicorn

    from tinystudent.log import info
    from tinystudent.models import load_model
    from tinystudent.teachers.http import read_api_key

    api_key = read_api_key(api_key_env)
    loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if not loaded.adapter.generates:
        raise ValueError(f"{model} is an {loaded.kind} model; serve needs a causal or seq2seq language model")
    app = create_app(loaded, served_name, max_batch_size, batch_wait_ms, api_key)
    info(
        f"serving {served_name or model} ({loaded.kind}, {loaded.device}) at http://{host}:{port}/v1"
        f"{' (API key required)' if api_key else ''}; pid {os.getpid()}"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
