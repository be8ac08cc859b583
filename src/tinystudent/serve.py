"""`tinystudent serve`: an OpenAI-compatible server (FastAPI on uvicorn) for any local model.

Endpoints: `GET /v1/models`, `POST /v1/completions` (prompt as text, list of texts or token ids;
max_tokens, temperature, top_p, seed, stop, logprobs, echo), `POST /v1/chat/completions` (the
model's chat template; logprobs/top_logprobs), `GET /health` and `GET /stats`.

`echo` with `logprobs` returns every prompt token's log-probability as vLLM does
(`logprobs.tokens`, `token_logprobs` with None for the first token, `top_logprobs`,
`text_offset` in characters of the returned text); with `max_tokens` 0 nothing is generated. This
is how a client scores a multiple-choice answer without a local tokenizer.

Concurrent requests are batched: one worker thread (the engine) owns the model, takes every
request that arrived within `batch_wait_ms` of the first (up to `max_batch_size` prompts), and runs
their prompts together, each with its own token limit, stop strings and seed.

What one request may do to the server is bounded, so that no client can disable it or its
neighbours:

- A request body over `max_body_bytes` (`serve --max-body-mb`, 8 MiB by default) is answered 413
  without being read further; one that declares a larger Content-Length is refused before any of
  it is read.
- Each request is checked and tokenized on a thread of its own before it joins a batch, never on
  the engine's: token ids must be in the vocabulary, chat messages need string roles and a chat
  template that accepts them, and a text prompt longer than the context could hold (its
  characters over the context length times the longest token's characters) is refused before it
  is tokenized. A completion request holds at most `MAX_PROMPTS` (1024) prompts. Each refusal is
  a 400 for that request alone.
- A batch that fails is run again one request at a time, so only a request that fails on its own
  gets an error (a 500); the engine keeps serving after any failure of a request. Should the
  engine thread ever end, `/health` answers 503 and so does every request, at once.
- On SIGTERM requests in flight get a few seconds to finish (`SHUTDOWN_GRACE_S`), then the
  process ends.
"""

from __future__ import annotations

import asyncio
import copy
import os
import queue
import secrets
import sys
import threading
import time
import traceback
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tinystudent.evaluation.generative import generate_in_batches
from tinystudent.models.generation import RowParams, eos_ids, sample_token
from tinystudent.models.kinds import ModelKind
from tinystudent.models.loading import LoadedModel, ResolvedModel
from tinystudent.models.packed_linears import packed_linears
from tinystudent.teachers.engine import TokenLogprobs, token_logprobs

Tokenizer = TypeVar("Tokenizer")
DEFAULT_MAX_BODY_BYTES = 8 * 2**20  # `serve --max-body-mb`
MAX_PROMPTS = 1024  # prompts in one /v1/completions request
SHUTDOWN_GRACE_S = 3  # on SIGTERM, how long requests in flight may take to finish
ENGINE_STOP_WAIT_S = 2.0  # then how long the engine may take to finish its batch


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error answer."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _describe(err: BaseException, limit: int = 500) -> str:
    """An exception in one line of at most `limit` characters, for an error answer."""
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size_text(size: int) -> str:
    return f"{size / 2**20:g} MiB ({size} bytes)" if size >= 2**20 else f"{size} bytes"


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 and not read further.

    A declared Content-Length over the limit is refused before any of the body is read; a body
    sent in chunks is read up to the limit. The body is read here, so what a request holds in
    memory before the app sees it is bounded by the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False
        chunks.clear()

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        response = error_response(
            413,
            f"the request body is larger than this server's limit of {_size_text(self.limit)}; send a "
            "shorter one, or start `tinystudent serve` with a larger --max-body-mb",
        )
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def _is_id(value: Any) -> bool:
    return type(value) is int  # not a bool, nor a float


def _prompt_shape(value: Any) -> Any:
    """A completion's prompt: a text, texts, token ids, or lists of token ids (ValueError if not)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("must be a text, a list of texts, a list of token ids or a list of lists of token ids")
    if not value:
        return value
    if _is_id(value[0]):
        bad = next((i for i, v in enumerate(value) if not _is_id(v)), None)
        if bad is not None:
            raise ValueError(f"item {bad} is not a token id (an integer), as item 0 is")
        return value
    if len(value) > MAX_PROMPTS:
        raise ValueError(f"holds {len(value)} prompts; one request may hold at most {MAX_PROMPTS}")
    if isinstance(value[0], str):
        bad = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
        if bad is not None:
            raise ValueError(f"item {bad} is not a text, as item 0 is")
        return value
    if not isinstance(value[0], list):
        raise ValueError("item 0 is neither a text, nor a token id (an integer), nor a list of token ids")
    for index, row in enumerate(value):
        if not isinstance(row, list):
            raise ValueError(f"item {index} is not a list of token ids, as item 0 is")
        bad = next((i for i, v in enumerate(row) if not _is_id(v)), None)
        if bad is not None:
            raise ValueError(f"item {index}[{bad}] is not a token id (an integer)")
    return value


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

    @field_validator("prompt", mode="plain")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        """One of the four shapes, told by the first item (pydantic's union would try every shape
        on every item, and hold an error for each item of a long list that is not that shape)."""
        return _prompt_shape(value)


class ChatRequest(Sampling):
    messages: list[dict[str, Any]]
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    max_completion_tokens: Optional[int] = Field(None, ge=0)

    @field_validator("messages", mode="plain")
    @classmethod
    def _check_messages(cls, value: Any) -> Any:
        """A list of objects, checked without copying each (their fields: Engine._chat_text)."""
        if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
            raise ValueError("must be a list of messages, each an object with a role and a content")
        return value


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

    def reset(self) -> None:
        """Forget what a failed run left, before the row runs again."""
        self.completion_ids, self.text, self.finish_reason, self.scored = [], "", "length", None


@dataclass
class Job:
    """One HTTP request on its way through the worker."""

    endpoint: str  # "completions" | "chat"
    request: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    rows: list[Row] = field(default_factory=list)  # made by Engine._prepare before the job is queued
    texts: list[str] = field(default_factory=list)  # the prompt texts, for echo

    @property
    def size(self) -> int:
        return max(len(self.rows), 1)


class Engine:
    """The worker thread that owns the model and batches requests, and the thread that checks and
    tokenizes each request before it joins a batch (with its own copy of the tokenizer)."""

    def __init__(self, loaded: LoadedModel, max_batch_size: int = 16, batch_wait_ms: float = 5.0):
        self.loaded, self.max_batch_size, self.batch_wait_s = loaded, max_batch_size, batch_wait_ms / 1000
        self.tokenizer, self.kind, self.adapter = loaded.tokenizer, loaded.kind, loaded.adapter
        self.prep_tokenizer = _own_copy(loaded.tokenizer)
        self.max_positions = loaded.adapter.position_limit(loaded.model)
        self.vocab_size = _vocabulary_size(loaded.model, loaded.tokenizer)
        self.token_chars = _longest_token_chars(loaded.tokenizer)  # no token stands for more characters
        self.stop_ids = eos_ids(loaded.model, loaded.tokenizer)
        self.jobs: queue.Queue = queue.Queue()  # prepared jobs, for the engine
        self.preps: queue.Queue = queue.Queue()  # (job, future) to prepare
        self.stats = {"requests": 0, "prompts": 0, "forward_batches": 0, "largest_batch": 0}
        self.failure: str | None = None  # why the engine thread ended, if it did
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="tinystudent-engine", daemon=True)
        self.prep_thread = threading.Thread(target=self._prepare_loop, name="tinystudent-prepare", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.prep_thread.start()

    def stop(self) -> None:
        """End both threads; a batch still running after ENGINE_STOP_WAIT_S ends with the process."""
        self.stopping = True
        self.preps.put(None)
        self.jobs.put(None)
        self.thread.join(timeout=ENGINE_STOP_WAIT_S)
        self._drain("the server is shutting down")

    @property
    def alive(self) -> bool:
        return not self.stopping and self.thread.is_alive() and self.prep_thread.is_alive()

    def why_not_alive(self) -> str:
        if self.stopping:
            return "the server is shutting down"
        return f"the engine has stopped ({self.failure or 'its thread ended'}); restart the server"

    async def submit(self, endpoint: str, request) -> dict:
        if not self.alive:
            raise RequestError(self.why_not_alive(), 503, "server_error")
        loop = asyncio.get_running_loop()
        job = Job(endpoint, request, loop, loop.create_future())
        prepared = loop.create_future()
        self.preps.put((job, prepared))
        if not self.prep_thread.is_alive():
            self._drain(self.why_not_alive())
        await prepared  # a RequestError if the request is refused
        self.jobs.put(job)
        if not self.thread.is_alive():  # it ended while this request was prepared
            self._drain(self.why_not_alive())
        return await job.future

    def _drain(self, message: str) -> None:
        """Answer every request still waiting in a queue with a 503 (the threads have ended)."""
        for waiting in (self.preps, self.jobs):
            while True:
                try:
                    item = waiting.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, Job):
                    self._settle(item, error=RequestError(message, 503, "server_error"))
                elif item is not None:
                    job, prepared = item
                    _resolve(job.loop, prepared, error=RequestError(message, 503, "server_error"))

    # --- the preparing thread -----------------------------------------------------------------

    def _prepare_loop(self) -> None:
        while (item := self.preps.get()) is not None:
            job, prepared = item
            try:
                self._prepare(job)
            except RequestError as err:
                _resolve(job.loop, prepared, error=err)
            except Exception as err:  # noqa: BLE001 - this request's failure, not the server's
                error = RequestError(f"could not prepare this request: {_describe(err)}", 500, "server_error")
                _resolve(job.loop, prepared, error=error)
            else:
                _resolve(job.loop, prepared, result=None)

    # --- the engine ---------------------------------------------------------------------------

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
        try:
            with packed_linears(self.loaded.model, self.loaded.device):  # for the server's life, not per batch
                self._serve()
        except BaseException as err:  # noqa: BLE001 - recorded for /health, printed to the server's log
            self.failure = _describe(err)
            traceback.print_exc(file=sys.stderr)
        finally:
            if not self.stopping:
                self.failure = self.failure or "its thread ended"
                self._drain(self.why_not_alive())

    def _serve(self) -> None:
        while (jobs := self._collect()) is not None:
            jobs = [job for job in jobs if not job.future.done()]  # skip clients that went away
            try:
                self._run(jobs)
            except Exception as err:  # noqa: BLE001 - answer whoever _run left waiting, keep serving
                for job in jobs:
                    self._settle(job, error=RequestError(f"the server failed: {_describe(err)}", 500, "server_error"))

    def _run(self, jobs: list[Job]) -> None:
        """Run jobs together; if that fails, each alone, so a request that fails fails by itself."""
        if not jobs:
            return
        try:
            with torch.no_grad():
                self._execute([row for job in jobs for row in job.rows])
        except Exception as err:  # noqa: BLE001 - the model failed on this batch
            if len(jobs) == 1:
                message = f"the model failed on this request: {_describe(err)}"
                self._settle(jobs[0], error=RequestError(message, 500, "server_error"))
                return
            for job in jobs:
                for row in job.rows:
                    row.reset()
                self._run([job])
            return
        for job in jobs:
            try:
                self._settle(job, result=self._respond(job))
            except Exception as err:  # noqa: BLE001
                message = f"could not build the answer: {_describe(err)}"
                self._settle(job, error=RequestError(message, 500, "server_error"))

    def _settle(self, job: Job, result: dict | None = None, error: Exception | None = None) -> None:
        _resolve(job.loop, job.future, result, error)

    # --- requests to rows --------------------------------------------------------------------

    def _params(self, request, max_tokens: int) -> RowParams:
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

    def _check_chars(self, text: str, max_tokens: int) -> None:
        """Refuse, before tokenizing it, a text more tokens than the context leaves could not hold."""
        if not self.max_positions:
            return
        room = max(self.max_positions - max_tokens, 0)
        if len(text) > room * self.token_chars:
            raise RequestError(
                f"this model's maximum context length is {self.max_positions} tokens; the prompt has "
                f"{len(text)} characters and max_tokens is {max_tokens}, and the {room} tokens left can "
                f"hold at most {room * self.token_chars} characters (no token is longer than "
                f"{self.token_chars})"
            )

    def _check_ids(self, ids: list[int]) -> None:
        bad = next((i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise RequestError(f"token id {bad} is not in this model's vocabulary (ids are 0 to {self.vocab_size - 1})")

    def _encode(self, text: str, max_tokens: int) -> list[int]:
        self._check_chars(text, max_tokens)
        return self.adapter.encode_prompt(self.prep_tokenizer, text)

    def _chat_text(self, request: ChatRequest, max_tokens: int) -> str:
        if not getattr(self.prep_tokenizer, "chat_template", None):
            raise RequestError(f"{model_name(self.loaded.resolved)} has no chat template; use /v1/completions")
        if not request.messages:
            raise RequestError("messages is empty")
        messages = []
        for index, message in enumerate(request.messages):
            role = message.get("role", "user")
            if not isinstance(role, str) or not role:
                raise RequestError(f"messages[{index}].role must be a string such as 'user', not {role!r}"[:200])
            messages.append({"role": role, "content": _content_text(message.get("content"), index)})
        self._check_chars("".join(m["content"] for m in messages), max_tokens)
        try:
            text = self.prep_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # noqa: BLE001 - a template refuses with whatever it raises
            raise RequestError(f"this model's chat template refused these messages: {_describe(err)}") from err
        if not isinstance(text, str):
            raise RuntimeError(f"the chat template gave a {type(text).__name__}, not a text")
        return text

    def _prepare(self, job: Job) -> None:
        """Check and tokenize one request (on the preparing thread): its rows, or a RequestError."""
        self.stats["requests"] += 1
        request = job.request
        if request.n != 1:
            raise RequestError("n must be 1 (ask again with another seed for more samples)")
        if request.stream:
            raise RequestError("stream is not supported; send stream=false")
        if job.endpoint == "chat":
            max_tokens = next((m for m in (request.max_completion_tokens, request.max_tokens) if m is not None), 256)
            top_n = (request.top_logprobs or 0) if request.logprobs else None
        else:
            max_tokens = 16 if request.max_tokens is None else request.max_tokens
            top_n = request.logprobs
        if top_n is not None and not self.adapter.decoder_only:
            raise RequestError(f"logprobs need a causal model; this server runs a {self.kind} model")
        if job.endpoint == "chat":
            texts = [self._chat_text(request, max_tokens)]
            id_rows = [self._encode(texts[0], max_tokens)]
        else:
            prompts = request.prompt if isinstance(request.prompt, list) else [request.prompt]
            if prompts and isinstance(prompts[0], int):
                prompts = [prompts]
            if not prompts:
                raise RequestError("prompt is empty")
            id_rows, texts = [], []
            for prompt in prompts:
                if isinstance(prompt, list):
                    self._check_length(prompt, max_tokens)
                    self._check_ids(prompt)
                    id_rows.append(list(prompt))
                    # decode gives a str for one row of ids; transformers types it str | list[str].
                    texts.append(self.prep_tokenizer.decode(prompt))  # type: ignore[arg-type]
                else:
                    id_rows.append(self._encode(prompt, max_tokens))
                    texts.append(prompt)
        for ids in id_rows:
            self._check_length(ids, max_tokens)
        job.texts = texts
        job.rows = [Row(ids, self._params(request, max_tokens), top_n) for ids in id_rows]
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
        if generated:  # one decoding batch of at most max_batch_size rows, refilled as rows are done
            self._count_batch(min(len(generated), self.max_batch_size))
        results = generate_in_batches(
            self.loaded.model,
            self.tokenizer,
            self.adapter,
            [r.ids for r in generated],
            [r.params for r in generated],
            self.max_batch_size,
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


def _resolve(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: Any = None, error: Exception | None = None
) -> None:
    """Settle a request's future from a worker thread (nothing if its client went away or the
    server's event loop has closed)."""

    def finish():
        if future.done():  # the client went away
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(finish)
    except RuntimeError:  # the event loop is closed: the server is gone, and nobody is waiting
        pass


def _own_copy(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of the tokenizer for the preparing thread, so that two threads never share one (a
    fast tokenizer may refuse a call while another thread's call holds it)."""
    try:
        return copy.deepcopy(tokenizer)
    except Exception:  # noqa: BLE001 - a tokenizer that cannot be copied is shared
        return tokenizer


def _vocabulary_size(model, tokenizer) -> int:
    """Token ids a prompt may hold: those the tokenizer knows and the model has embeddings for."""
    size = len(tokenizer)
    try:
        rows = model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):
        return size
    return min(size, rows) if isinstance(rows, int) else size


def _longest_token_chars(tokenizer) -> int:
    """The most characters any one token stands for: its vocabulary entry's length, which counts
    a byte-level token's bytes (at least its characters) and a SentencePiece piece's characters."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1) or 1


def model_name(resolved: ResolvedModel) -> str:
    """What clients see a model as: its Hub id, or a local folder's or file's name, never its path."""
    path = Path(resolved.name).expanduser()
    return (path.resolve().name or resolved.name) if path.exists() else resolved.name


def _content_text(content, index: int = 0) -> str:
    """A chat message's content: a string, or OpenAI's list of {type: text, text} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError(f"messages[{index}].content must be a string or a list of text parts")


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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app serving `loaded` under `served_name` (default: its Hub id or folder name)."""
    engine = Engine(loaded, max_batch_size, batch_wait_ms)
    public_name = served_name or model_name(loaded.resolved)
    names = {public_name, model_name(loaded.resolved), loaded.name, str(loaded.resolved.path)}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="tinystudent serve", lifespan=lifespan)
    app.state.engine = engine
    # Added before the key check, so inside it: a client without the key is refused unread.
    app.add_middleware(BodyLimit, limit=max_body_bytes)

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

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception):
        return error_response(500, f"the server failed on this request: {_describe(err)}", "server_error")

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
        if not engine.alive:
            message = engine.why_not_alive()
            return JSONResponse(
                {"status": "unavailable", "error": {"message": message, "type": "server_error", "code": 503}},
                status_code=503,
            )
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
            "root": model_name(loaded.resolved),
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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> None:
    """Load `model` and serve it until interrupted (SIGINT or SIGTERM)."""
    import uvicorn

    from tinystudent.log import info
    from tinystudent.models import load_model
    from tinystudent.teachers.http import read_api_key

    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, not {port}")
    if max_body_bytes < 1:
        raise ValueError(f"the body size limit must be at least 1 byte, not {max_body_bytes}")
    api_key = read_api_key(api_key_env)
    loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if not loaded.adapter.generates:
        raise ValueError(f"{model} is an {loaded.kind} model; serve needs a causal or seq2seq language model")
    app = create_app(loaded, served_name, max_batch_size, batch_wait_ms, api_key, max_body_bytes)
    info(
        f"serving {served_name or model} ({loaded.kind}, {loaded.device}) at http://{host}:{port}/v1"
        f"{' (API key required)' if api_key else ''}; request bodies up to {_size_text(max_body_bytes)}; "
        f"pid {os.getpid()}"
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
