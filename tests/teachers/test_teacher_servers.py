"""One teacher over several OpenAI-compatible servers: requests spread over them with at most
`concurrency` in flight on each, one cache identity whichever servers serve the model, and a
server that dies or fails leaves its questions to the others.

Two real `tinystudent serve` subprocesses of the tiny causal model check outputs, the cache and a
kill mid-run; small in-process servers that count their requests in flight check the limits."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import ServedModel, free_port, stop_serve

from tinystudent.store import Store
from tinystudent.tasks import Example
from tinystudent.teachers import TeacherUnavailable, load_rationales, make_teacher, teach

QUESTIONS = [
    Example(f"q{i}", f"Which property of sample {i} is measured first?", ("mass", "colour", "age", "shape"), i % 4)
    for i in range(16)
]


def prompts_served(server: ServedModel) -> int:
    return httpx.get(f"http://127.0.0.1:{server.port}/stats").json()["prompts"]


@pytest.fixture(scope="module")
def two_servers(tiny_causal, tmp_path_factory):
    """Two `tinystudent serve` processes of the same tiny model, started together."""
    folder = tmp_path_factory.mktemp("serve")
    with ThreadPoolExecutor(2) as starting:
        servers = list(starting.map(lambda i: ServedModel(tiny_causal, folder / f"serve{i}.log"), range(2)))
    yield servers
    for server in servers:
        stop_serve(server.process)


@pytest.mark.slow
def test_two_servers_share_the_work_and_the_cache_of_one(two_servers, tiny_causal, tmp_path):
    first, second = two_servers
    model = str(tiny_causal)

    def over(*servers, **settings):
        return make_teacher(model, [s.base_url for s in servers], endpoint="completions", concurrency=2, **settings)

    one, both = over(first), over(first, second)
    assert one.identity == both.identity == over(second).identity == over(second, first).identity
    assert one.identity.startswith(f"http-servers:{model}#") and "127.0.0.1" not in one.identity
    # One URL as a string keeps the identity it always had (existing caches keep working).
    assert make_teacher(model, first.base_url).identity == f"http:{first.base_url}#{model}"

    with Store(tmp_path / "one.sqlite") as store:
        alone = teach(one, QUESTIONS, "toy", "cot", store, max_new_tokens=8)
        reused = teach(both, QUESTIONS, "toy", "cot", store, max_new_tokens=8)
    assert alone.generated == 16 and (reused.cached, reused.model_calls) == (16, 0)

    before = [prompts_served(s) for s in two_servers]
    with Store(tmp_path / "two.sqlite") as store:
        shared = teach(both, QUESTIONS, "toy", "cot", store, max_new_tokens=8)
    sent = [prompts_served(s) - b for s, b in zip(two_servers, before)]
    assert shared.generated == 16 and shared.failed == 0
    assert all(n > 0 for n in sent) and sum(sent) == 16, sent
    assert [o.meta["raw"] for o in shared.outputs] == [o.meta["raw"] for o in alone.outputs]


def test_a_server_killed_mid_run_leaves_its_questions_to_the_other(two_servers, tiny_causal, tmp_path):
    """Runs last in this module: it kills the first server for good."""
    first, second = two_servers
    teacher = make_teacher(
        str(tiny_causal),
        [first.base_url, second.base_url],
        endpoint="completions",
        concurrency=2,
        max_retries=2,
        backoff=0.05,
        timeout=20,
    )
    second_before = prompts_served(second)
    with Store(tmp_path / "cache.sqlite") as store:

        def kill_after_four(status, output):
            if status == "generated" and first.process.poll() is None:
                if store.db.execute("SELECT COUNT(*) FROM teacher_outputs").fetchone()[0] >= 4:
                    first.process.kill()

        summary = teach(teacher, QUESTIONS, "toy", "cot", store, max_new_tokens=16, on_output=kill_after_four)
        rows, questions = store.db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT example_id) FROM teacher_outputs"
        ).fetchone()
        assert first.process.poll() is not None  # it was killed mid-run
        assert (summary.generated, summary.failed) == (16, 0)
        assert rows == questions == 16  # nothing lost, nothing twice
        assert len(load_rationales(store, teacher.name, "toy", "cot")) == 16
    assert prompts_served(second) - second_before >= 8


# --- in-process servers that count their requests in flight -------------------------------------


class Counting:
    """A loopback OpenAI-compatible server that answers every question with (B) after `delay`
    seconds, counts its requests and the most it had in flight at once, and lists one model
    whose weights are `weights`. `fail_from`: requests from this number on get a 503."""

    def __init__(self, weights: str = "/models/m", delay: float = 0.0, fail_from: int | None = None, key: str = ""):
        self.weights, self.delay, self.fail_from, self.key = weights, delay, fail_from, key
        self.requests = self.answered = self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                card = {"id": "m", "object": "model", "root": owner.weights}
                self.reply(200, json.dumps({"object": "list", "data": [card]}).encode())

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                with owner.lock:
                    owner.requests += 1
                    owner.in_flight += 1
                    owner.most_in_flight = max(owner.most_in_flight, owner.in_flight)
                    failing = owner.fail_from is not None and owner.requests >= owner.fail_from
                time.sleep(owner.delay)
                with owner.lock:
                    owner.in_flight -= 1
                    owner.answered += not failing
                if failing:
                    self.reply(503, f"overloaded (key {owner.key})".encode())
                else:
                    message = {"role": "assistant", "content": "Thus, the answer is (B)."}
                    self.reply(200, json.dumps({"choices": [{"index": 0, "message": message}]}).encode())

            def reply(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting():
    servers = []

    def make(**behaviour) -> Counting:
        servers.append(Counting(**behaviour))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_in_flight_requests_never_exceed_concurrency_per_server(counting, tmp_path):
    servers = [counting(delay=0.1), counting(delay=0.1)]
    teacher = make_teacher("m", [s.base_url for s in servers], concurrency=3)
    with Store(tmp_path / "cache.sqlite") as store:
        summary = teach(teacher, QUESTIONS, "toy", "zero_shot", store)
    assert summary.generated == 16
    assert [s.most_in_flight for s in servers] == [3, 3]  # the limit, reached on each server
    assert sum(s.requests for s in servers) == 16 and all(s.requests >= 5 for s in servers)


def test_a_failing_server_is_taken_out_and_comes_back_after_its_cooldown(counting, tmp_path):
    flaky, steady = counting(fail_from=1), counting()
    teacher = make_teacher(
        "m", [flaky.base_url, steady.base_url], concurrency=2, max_retries=1, backoff=0.01, cooldown=0.3
    )
    with Store(tmp_path / "cache.sqlite") as store:
        first = teach(teacher, QUESTIONS[:8], "toy", "cot", store)
        assert (first.generated, first.failed) == (8, 0) and steady.answered == 8
        assert flaky.requests <= 4  # two requests in flight, two attempts each, then it is out
        flaky.fail_from, failed_requests = None, flaky.requests
        time.sleep(0.35)
        second = teach(teacher, QUESTIONS[8:], "toy", "cot", store)
    assert (second.generated, second.failed) == (8, 0)
    assert flaky.answered > 0 and flaky.requests > failed_requests  # back in rotation


def test_every_server_down_is_one_clear_error_naming_them_with_the_key_redacted(counting, tmp_path, monkeypatch):
    key = "sk-pool-secret-77"
    monkeypatch.setenv("POOL_KEY", key)
    servers = [counting(fail_from=1, key=key), counting(fail_from=1, key=key)]
    teacher = make_teacher(
        "m", [s.base_url for s in servers], api_key_env="POOL_KEY", concurrency=2, max_retries=1, backoff=0.01
    )
    with Store(tmp_path / "cache.sqlite") as store, pytest.raises(TeacherUnavailable) as raised:
        teach(teacher, QUESTIONS[:6], "toy", "cot", store)
    message = str(raised.value)
    assert "every server of this teacher is out of rotation" in message
    assert all(f"{s.base_url}/chat/completions: " in message for s in servers)
    assert "gave up after 2 attempts; last: HTTP 503: overloaded" in message
    assert key not in message and "[REDACTED]" in message

    nowhere = [f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1"]
    with pytest.raises(TeacherUnavailable, match="out of rotation") as raised:
        make_teacher("m", nowhere)
    assert all(f"{url}/models: could not connect" in str(raised.value) for url in nowhere)


def test_servers_of_different_weights_are_refused_unless_an_identity_is_given(counting):
    servers = [counting(weights="/models/llama-7b"), counting(weights="/models/llama-13b")]
    urls = [s.base_url for s in servers]
    with pytest.raises(ValueError, match="report different weights .*llama-7b.*llama-13b"):
        make_teacher("m", urls)
    assert make_teacher("m", urls, identity="llama-7b@cluster").identity == "llama-7b@cluster"
    with pytest.raises(ValueError, match="distinct servers"):
        make_teacher("m", [urls[0], urls[0] + "/"])
    with pytest.raises(ValueError, match="distinct servers"):
        make_teacher("m", [])


@pytest.mark.parametrize("repeated", [True, False])
def test_teach_command_takes_several_servers(counting, tmp_path, repeated):
    from test_teachers_http import write_task
    from typer.testing import CliRunner

    from tinystudent.cli import app

    servers = [counting(delay=0.02), counting(delay=0.02)]
    urls = [s.base_url for s in servers]
    given = ["--base-url", urls[0], "--base-url", urls[1]] if repeated else ["--base-url", ",".join(urls)]
    task = write_task(tmp_path / "toy.jsonl", QUESTIONS[:10])
    args = ["teach", "--teacher", "m", "--task", str(task), "--strategy", "cot", *given, "--concurrency", "1"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["generated"], summary["failed"]) == (8, 0)
    assert all(s.requests > 0 and s.most_in_flight == 1 for s in servers)


def test_an_experiment_teacher_may_name_several_servers():
    from tinystudent.experiments.config import TeacherSpec

    urls = ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
    spec = TeacherSpec(name="big", backend="http", model="m", base_url=urls)
    assert spec.base_url == urls
    assert TeacherSpec(name="big", backend="http", model="m", base_url=urls[0]).base_url == urls[0]
    with pytest.raises(ValueError, match="lists a server twice"):
        TeacherSpec(name="big", backend="http", model="m", base_url=[urls[0], urls[0]])
    with pytest.raises(ValueError, match="needs `base_url`"):
        TeacherSpec(name="big", backend="http", model="m", base_url=[])
