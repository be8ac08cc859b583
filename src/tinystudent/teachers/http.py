"""A teacher behind an OpenAI-compatible server: vLLM, llama.cpp's server, Ollama, `tinystudent serve`.

Generation goes to `/v1/chat/completions` (default) or `/v1/completions`, one request per prompt,
at most `concurrency` at a time (the server batches them). Connection errors, timeouts, 429 and
5xx answers are retried with exponential backoff (honouring `Retry-After`); other 4xx answers and
malformed JSON fail that request with a message saying what came back. 401, 403 and 404 mean the
key, URL or model name is wrong, so they stop the run at once.

Choice scoring asks `/v1/completions` to echo each `context + choice` with `logprobs`, and sums the
log-probabilities of the tokens that start inside the choice (found by `text_offset`, so no local
tokenizer is needed). A server that does not echo prompt log-probabilities (OpenAI's chat models,
llama.cpp's server) raises `ScoringUnsupported`; callers then fall back to generative answers.

The API key is read from the environment variable the config names, sent as a bearer token, and
never logged, stored or put in an error message.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterator, Sequence, TypeVar
from urllib.parse import urlparse

import httpx

from tinystudent.evaluation.scoring import ChoiceRequest
from tinystudent.redact import redact, remember_secret
from tinystudent.teachers.base import (
    Generation,
    GenerationResult,
    GenerationSettings,
    ScoreResult,
    ScoringUnsupported,
    TeacherError,
    TeacherUnavailable,
)

T = TypeVar("T")  # what one request gives back

ENDPOINTS = ("chat", "completions")
FATAL_STATUS = {
    401: "the API key was refused",
    403: "the API key may not use this model",
    404: "wrong base URL or model name",
}
MAX_BACKOFF_S = 30.0


class TeacherHTTPError(TeacherError):
    """A 4xx answer (other than 401/403/404/429); `status` is its HTTP status code."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def normalise_base_url(base_url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all mean the same server."""
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"base URL must look like http://host:port/v1, got {base_url!r}")
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def read_api_key(api_key_env: str | None) -> str | None:
    """The key from the environment variable named `api_key_env` (the name, never the key, is config)."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env, "")
    if not key:
        raise ValueError(
            f"environment variable {api_key_env} (named by api_key_env) is not set or empty; "
            f"export it with the server's API key"
        )
    remember_secret(key)
    return key


class HttpTeacher:
    """A teacher served over HTTP by an OpenAI-compatible server.

    Args:
        model: the model name the server knows it by (also the name outputs are stored under).
        base_url: `http://host:port/v1` (a missing `/v1` is added).
        api_key_env: name of the environment variable holding the API key (None: no key).
        endpoint: `chat` (default; the server applies the model's chat template) or `completions`.
        concurrency: requests in flight at once (default 8).
        timeout: seconds to wait for one answer (default 120).
        max_retries: retries after a connection error, timeout, 429 or 5xx (default 4).
        backoff: first retry delay in seconds, doubled each retry (default 0.5).
        identity: what the cache knows this teacher by (default: base URL and model name); set it
            to keep cache hits when the same weights move to another server.
        echo_max_tokens: `max_tokens` sent with scoring requests (default 1, which every server
            with echo accepts; the token it generates is ignored).
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str | None = None,
        endpoint: str = "chat",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        identity: str | None = None,
        echo_max_tokens: int = 1,
    ):
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        self.name = model
        self.base_url = normalise_base_url(base_url)
        self.identity = identity or f"http:{self.base_url}#{model}"
        self.endpoint, self.concurrency = endpoint, concurrency
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.echo_max_tokens = echo_max_tokens
        self.calls = 0
        self.tokenizer = None  # the server's tokenizer is not at hand: inputs are sent as they are
        self.input_limit = None
        self._calls_lock = threading.Lock()
        self._stop = threading.Event()
        headers = {"Content-Type": "application/json"}
        key = read_api_key(api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency),
        )

    # --- prompts -----------------------------------------------------------------------------

    def _messages(self, prompt: str) -> list[dict]:
        return [{"role": "user", "content": prompt}]

    def full_prompt(self, prompt: str) -> str:
        if self.endpoint == "chat":
            return json.dumps(self._messages(prompt), ensure_ascii=False)
        return prompt

    def cache_fields(self) -> dict:
        return {"backend": "http", "endpoint": self.endpoint}

    def count_tokens(self, text: str) -> None:
        return None

    # --- one request, with retries ------------------------------------------------------------

    def post(self, path: str, payload: dict) -> dict:
        """POST JSON, retrying what a retry can fix; returns the parsed JSON object."""
        url = f"{self.base_url}/{path}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise TeacherUnavailable(f"{url}: stopped because another request failed for good")
            delay = min(self.backoff * 2**attempt, MAX_BACKOFF_S) * random.uniform(0.75, 1.0)
            with self._calls_lock:
                self.calls += 1
            try:
                response = self._post_within_deadline(url, payload)
            except httpx.TimeoutException:
                last = f"no answer within the {self.timeout:g} s timeout"
            except httpx.TransportError as err:
                last = f"could not connect ({type(err).__name__}: {err})"
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}: {_snippet(response.text)}"
                    delay = max(delay, _retry_after(response))
                else:
                    return self._parse(url, response)
            if attempt < self.max_retries:
                self._stop.wait(delay)
        raise TeacherUnavailable(f"{url}: gave up after {self.max_retries + 1} attempts; last: {last}")

    def _post_within_deadline(self, url: str, payload: dict) -> httpx.Response:
        """One POST that must finish within `timeout` seconds in all: httpx's own timeout bounds
        each read, so a server trickling a byte at a time could otherwise hold it forever."""
        deadline = time.monotonic() + self.timeout
        with self._client.stream("POST", url, json=payload) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"no whole answer within {self.timeout:g} s", request=response.request)
            headers = {
                k: v
                for k, v in response.headers.items()  # the body is already decoded
                if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
            }
            return httpx.Response(response.status_code, headers=headers, content=bytes(body), request=response.request)

    def _parse(self, url: str, response: httpx.Response) -> dict:
        status = response.status_code
        if status in FATAL_STATUS:
            raise TeacherUnavailable(f"{url}: HTTP {status}, {FATAL_STATUS[status]}: {_snippet(response.text)}")
        if status >= 400:
            raise TeacherHTTPError(f"{url}: HTTP {status}: {_snippet(response.text)}", status)
        try:
            data = response.json()
        except ValueError:
            raise TeacherError(f"{url}: HTTP {status} with malformed JSON: {_snippet(response.text)!r}") from None
        if not isinstance(data, dict):
            raise TeacherError(f"{url}: expected a JSON object, got {_snippet(response.text)!r}")
        return data

    # --- generation ---------------------------------------------------------------------------

    def _generate_one(self, prompt: str, settings: GenerationSettings, seed: int) -> Generation:
        payload: dict = {"model": self.name, "max_tokens": settings.max_new_tokens, "temperature": settings.temperature}
        if settings.sampling:
            payload.update(top_p=settings.top_p, seed=seed)
        if settings.stop:
            payload["stop"] = list(settings.stop)
        if self.endpoint == "chat":
            payload["messages"] = self._messages(prompt)
            data = self.post("chat/completions", payload)
            text = _field(data, ("choices", 0, "message", "content"), "chat/completions")
        else:
            payload["prompt"] = prompt
            data = self.post("completions", payload)
            text = _field(data, ("choices", 0, "text"), "completions")
        if not isinstance(text, str):
            raise TeacherError(f"{self.base_url}: expected text in the answer, got {text!r}")
        usage = data.get("usage") or {}
        reason = (data.get("choices") or [{}])[0].get("finish_reason")
        return Generation(text, usage.get("prompt_tokens"), usage.get("completion_tokens"), reason)

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, seeds: Sequence[int]
    ) -> Iterator[tuple[int, GenerationResult]]:
        return self._run_all(len(prompts), lambda i: self._generate_one(prompts[i], settings, seeds[i]))

    # --- choice scoring -----------------------------------------------------------------------

    def _score_one(self, request: ChoiceRequest) -> list[float]:
        prompts = [request.context + c for c in request.continuations]
        payload = {
            "model": self.name,
            "prompt": prompts,
            "echo": True,
            "logprobs": 1,
            "max_tokens": self.echo_max_tokens,
            "temperature": 0.0,
        }
        try:
            data = self.post("completions", payload)
        except TeacherHTTPError as err:  # a 4xx here most often means "echo/logprobs not supported"
            raise ScoringUnsupported(f"{self.base_url} refused an echo + logprobs request: {err}") from None
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) != len(prompts):
            raise TeacherError(
                f"{self.base_url}/completions: expected {len(prompts)} choices, got {_snippet(json.dumps(data))}"
            )
        choices = (
            sorted(choices, key=lambda c: c.get("index", 0)) if all(isinstance(c, dict) for c in choices) else choices
        )
        return [self._continuation_logprob(c, len(request.context), p) for c, p in zip(choices, prompts)]

    def _continuation_logprob(self, choice: dict, context_chars: int, prompt: str) -> float:
        """Sum of the log-probabilities of the echoed tokens that start inside the continuation."""
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        text = choice.get("text") if isinstance(choice, dict) else None
        if not isinstance(logprobs, dict) or not isinstance(text, str) or not text.startswith(prompt):
            raise ScoringUnsupported(f"{self.base_url} does not echo the prompt with log-probabilities")
        offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
        if not isinstance(offsets, list) or not isinstance(values, list) or len(offsets) != len(values):
            raise ScoringUnsupported(f"{self.base_url} returned no token_logprobs/text_offset for the prompt")
        picked = [v for o, v in zip(offsets, values) if context_chars <= o < len(prompt)]
        if not picked or any(v is None for v in picked):
            # llama.cpp's server answers echo with the generated token's log-probability only.
            raise ScoringUnsupported(f"{self.base_url} returned no log-probabilities for the prompt's tokens")
        return float(sum(picked))

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> Iterator[tuple[int, ScoreResult]]:
        return self._run_all(len(requests), lambda i: self._score_one(requests[i]))

    # --- running many requests --------------------------------------------------------------

    def _run_all(self, count: int, work: Callable[[int], T]) -> Iterator[tuple[int, T | TeacherError]]:
        """Run work(0..count-1) with at most `concurrency` in flight, yielding results as they come.

        TeacherError is yielded for its index; TeacherUnavailable and ScoringUnsupported stop
        everything (queued requests are cancelled, running ones stop retrying) and are raised.
        """
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher-http")
        pending = {pool.submit(work, i): i for i in range(count)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        yield index, future.result()
                    except TeacherError as err:
                        yield index, err
        finally:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self._stop.clear()

    def close(self) -> None:
        self._client.close()


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", 0)), MAX_BACKOFF_S)
    except ValueError:
        return 0.0


def _field(data: dict, path: tuple, endpoint: str):
    value = data
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise TeacherError(
                f"{endpoint}: the answer has no {'.'.join(map(str, path))}: {_snippet(json.dumps(data))}"
            ) from None
    return value
