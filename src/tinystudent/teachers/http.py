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

Several servers of the same model can stand behind one teacher (`base_url` a list): each request
goes to the server in rotation with the fewest requests in flight, at most `concurrency` per
server. A server is taken out of rotation for `cooldown` seconds when it refuses a connection
while others are up, or when a request has failed on it `max_retries + 1` times; that request
moves to another server. One failure takes a server out again when it has not answered since it
came back. With no server left in rotation the run stops with TeacherUnavailable naming each one.

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

from tinystudent.models.requests import ChoiceRequest
from tinystudent.redact import redact, redact_url, remember_secret
from tinystudent.teachers.base import (
    Generation,
    GenerationResult,
    GenerationSettings,
    ScoreResult,
    ScoringUnsupported,
    TeacherError,
    TeacherUnavailable,
)
from tinystudent.teachers.servers import Server, ServerPool

T = TypeVar("T")  # what one request gives back

ENDPOINTS = ("chat", "completions")
FATAL_STATUS = {
    401: "the API key was refused",
    403: "the API key may not use this model",
    404: "wrong base URL or model name",
}
MAX_BACKOFF_S = 30.0
PROBE_TIMEOUT_S = 10.0  # GET /v1/models answers at once on every server we know


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


class _ServerFailed(Exception):
    """A request gives up on its server; `why` is None when another request took it out first."""

    def __init__(self, why: str | None):
        super().__init__(why)
        self.why = why


class HttpTeacher:
    """A teacher served over HTTP by one or several OpenAI-compatible servers of the same model.

    Args:
        model: the model name the servers know it by (also the name outputs are stored under).
        base_url: `http://host:port/v1` (a missing `/v1` is added), or a list of such URLs: servers
            of the same model that share the requests.
        api_key_env: name of the environment variable holding the API key (None: no key); the same
            key is sent to every server.
        endpoint: `chat` (default; the server applies the model's chat template) or `completions`.
        concurrency: requests in flight at once per server (default 8).
        timeout: seconds to wait for one answer (default 120).
        max_retries: retries on one server after a connection error, timeout, 429 or 5xx (default 4).
        backoff: first retry delay in seconds, doubled each retry (default 0.5).
        identity: what the cache knows this teacher by. Default for one URL given as a string:
            `http:{base URL}#{model}`, as it has always been (a password in the URL masked). Default
            for a list (even of one URL): `http-servers:{model}#{weights}`, where `weights` is what
            every server reports for the model in `GET /v1/models`: `tinystudent serve`'s weights
            hash, else vLLM's `root` (the weights it loaded), else the model's id. It names no
            server, so outputs cached through one server are reused through two, and servers
            reporting different weights are an error (servers down when the teacher is made are
            not asked). Set `identity` to keep the cache of one URL given as a string when adding
            servers (pass its old identity), or when the servers name the same weights differently
            (e.g. different local paths).
        echo_max_tokens: `max_tokens` sent with scoring requests (default 1, which every server
            with echo accepts; the token it generates is ignored).
        cooldown: seconds a failing server stays out of rotation (default 30).
    """

    def __init__(
        self,
        model: str,
        base_url: str | Sequence[str],
        *,
        api_key_env: str | None = None,
        endpoint: str = "chat",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        identity: str | None = None,
        echo_max_tokens: int = 1,
        cooldown: float = 30.0,
    ):
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or cooldown <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0, timeout > 0 and cooldown > 0")
        urls = (
            [normalise_base_url(base_url)] if isinstance(base_url, str) else [normalise_base_url(u) for u in base_url]
        )
        if not urls or len(set(urls)) != len(urls):
            raise ValueError(f"base_url must list one or more distinct servers, got {list(base_url)}")
        self.name = model
        self.base_urls = tuple(urls)
        for url in urls:  # a password in a URL is a secret like a key: masked wherever it shows
            remember_secret(urlparse(url).password)
        self.base_url = ", ".join(redact_url(url) for url in urls)  # how errors name the server(s)
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
        servers = [
            Server(
                url,
                httpx.Client(
                    headers=headers,
                    timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                    limits=httpx.Limits(max_connections=concurrency),
                ),
            )
            for url in urls
        ]
        self._pool = ServerPool(servers, concurrency, cooldown)
        if identity:
            self.identity = identity
        elif isinstance(base_url, str):
            self.identity = f"http:{self.base_url}#{model}"
        else:
            try:
                self.identity = f"http-servers:{model}#{self._served_weights()}"
            except BaseException:
                self.close()
                raise

    def _served_weights(self) -> str:
        """The weights every server answering `GET /v1/models` reports for the model; servers that
        do not answer are taken out of rotation (and checked by no one when they come back)."""
        reported: dict[str, str] = {}
        for server in self._pool.servers:
            url = f"{server.url}/models"
            try:
                response = server.client.get(url, timeout=min(self.timeout, PROBE_TIMEOUT_S))
            except httpx.TransportError as err:
                self._pool.take_out(server, f"{url}: could not connect ({type(err).__name__}: {err})")
                continue
            status = response.status_code
            if status in (401, 403):
                raise TeacherUnavailable(f"{url}: HTTP {status}, {FATAL_STATUS[status]}: {_snippet(response.text)}")
            if status == 429 or status >= 500:
                self._pool.take_out(server, f"{url}: HTTP {status}: {_snippet(response.text)}")
                continue
            reported[server.url] = _reported_weights(url, response, self.name)
        if not reported:
            raise TeacherUnavailable(self._pool.why_all_out())
        if len(set(reported.values())) > 1:
            each = ", ".join(f"{url} serves {weights}" for url, weights in reported.items())
            raise ValueError(
                f"the servers of teacher {self.name} report different weights ({each}): list servers of one "
                "model, or set `identity` if these are the same weights under different names"
            )
        return next(iter(reported.values()))

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
        """POST JSON to a server in rotation, retrying what a retry can fix and moving to another
        server when this one fails; returns the parsed JSON object."""
        for _ in range(2 * len(self._pool.servers)):  # a request may meet each server twice at most
            server = self._pool.acquire(self._stop)
            try:
                return self._post_to(server, path, payload)
            except _ServerFailed as failed:
                if failed.why:
                    self._pool.take_out(server, failed.why)
            finally:
                self._pool.release(server)
        reasons = "; ".join(s.why_out for s in self._pool.servers)
        raise TeacherUnavailable(f"a request failed on every server of this teacher, twice: {reasons}")

    def _post_to(self, server: Server, path: str, payload: dict) -> dict:
        """POST to one server with up to `max_retries` retries; raises _ServerFailed to move on."""
        url = f"{server.url}/{path}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise TeacherUnavailable(f"{url}: stopped because another request failed for good")
            if attempt and self._pool.is_out(server):
                raise _ServerFailed(None)  # another request took it out: go elsewhere at once
            delay = min(self.backoff * 2**attempt, MAX_BACKOFF_S) * random.uniform(0.75, 1.0)
            with self._calls_lock:
                self.calls += 1
            refused = False
            try:
                response = self._post_within_deadline(server.client, url, payload)
            except httpx.TimeoutException:
                last = f"no answer within the {self.timeout:g} s timeout"
            except httpx.TransportError as err:
                last = f"could not connect ({type(err).__name__}: {err})"
                refused = isinstance(err, httpx.ConnectError)
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}: {_snippet(response.text)}"
                    delay = max(delay, _retry_after(response))
                else:
                    self._pool.answered(server)
                    return self._parse(url, response)
            if (refused or server.failing) and self._pool.others_in_rotation(server):
                raise _ServerFailed(f"{url}: {last}")  # others can answer now; no need to wait for this one
            if attempt < self.max_retries:
                self._stop.wait(delay)
        raise _ServerFailed(f"{url}: gave up after {self.max_retries + 1} attempts; last: {last}")

    def _post_within_deadline(self, client: httpx.Client, url: str, payload: dict) -> httpx.Response:
        """One POST that must finish within `timeout` seconds in all: httpx's own timeout bounds
        each read, so a server trickling a byte at a time could otherwise hold it forever."""
        deadline = time.monotonic() + self.timeout
        with client.stream("POST", url, json=payload) as response:
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
        """Run work(0..count-1) with at most `concurrency` in flight per server, yielding results as
        they come.

        TeacherError is yielded for its index; TeacherUnavailable and ScoringUnsupported stop
        everything (queued requests are cancelled, running ones stop retrying) and are raised.
        """
        self._stop.clear()
        self._pool.revive_if_all_out()
        workers = self.concurrency * len(self._pool.servers)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher-http")
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
        for server in self._pool.servers:
            server.client.close()


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", 0)), MAX_BACKOFF_S)
    except ValueError:
        return 0.0


def _reported_weights(url: str, response: httpx.Response, model: str) -> str:
    """What one server's `GET /v1/models` answer says the model's weights are."""
    try:
        cards = response.json()["data"] if response.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        cards = None
    if not isinstance(cards, list) or not all(isinstance(c, dict) for c in cards):
        raise ValueError(
            f"{url}: HTTP {response.status_code}, no model list ({_snippet(response.text)!r}); a teacher with a "
            "list of servers is known by the weights they report: set `identity` to name it yourself"
        )
    # A server that serves one model under any name (llama.cpp's) may list it under another name.
    card = next((c for c in cards if c.get("id") == model), cards[0] if len(cards) == 1 else None)
    if card is None:
        raise ValueError(f"{url} does not list model {model!r}; it lists {[c.get('id') for c in cards]}")
    own = card.get("tinystudent")
    if isinstance(own, dict) and isinstance(own.get("identity"), str):
        return own["identity"]
    return str(card.get("root") or card.get("id"))


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
