"""The servers behind one HTTP teacher: which one gets the next request, how many each has in
flight, and which are out of rotation after failing (see `tinystudent.teachers.http`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

from tinystudent.teachers.base import TeacherUnavailable


@dataclass(eq=False)
class Server:
    """One server of a teacher and what the teacher has seen of it (changed under the pool's lock).

    Attributes:
        url: `http://host:port/v1`.
        client: its own connection pool, `concurrency` connections at most.
        in_flight: requests sent to it and not yet finished (including their retries).
        sent: requests handed to it so far (ties between equally busy servers go to the least used).
        out_until: `time.monotonic()` at which it re-enters rotation (0: in rotation).
        why_out: why it was last taken out, starting with the URL it failed on.
        failing: it was taken out and has not answered since, so one failure takes it out again.
    """

    url: str
    client: httpx.Client
    in_flight: int = 0
    sent: int = 0
    out_until: float = 0.0
    why_out: str = ""
    failing: bool = False


class ServerPool:
    """The servers behind one teacher: each request gets a slot on the least busy server in
    rotation, at most `concurrency` per server."""

    def __init__(self, servers: list[Server], concurrency: int, cooldown: float):
        self.servers, self.concurrency, self.cooldown = servers, concurrency, cooldown
        self._changed = threading.Condition()

    def _in_rotation(self) -> list[Server]:
        now = time.monotonic()
        return [s for s in self.servers if s.out_until <= now]

    def acquire(self, stop: threading.Event) -> Server:
        """A slot on a server, waiting while every server in rotation is busy. Raises
        TeacherUnavailable when no server is in rotation or the run was stopped."""
        with self._changed:
            while not stop.is_set():
                up = self._in_rotation()
                if not up:
                    raise TeacherUnavailable(self.why_all_out())
                free = [s for s in up if s.in_flight < self.concurrency]
                if free:
                    server = min(free, key=lambda s: (s.in_flight, s.sent))
                    server.in_flight += 1
                    server.sent += 1
                    return server
                self._changed.wait(0.1)  # woken by release; the timeout also notices a cooldown ending
        raise TeacherUnavailable(f"{self.servers[0].url}: stopped because another request failed for good")

    def release(self, server: Server) -> None:
        with self._changed:
            server.in_flight -= 1
            self._changed.notify()

    def take_out(self, server: Server, why: str) -> None:
        """Out of rotation for `cooldown` seconds (the first reason is kept while it is out)."""
        with self._changed:
            if server.out_until <= time.monotonic():
                server.out_until = time.monotonic() + self.cooldown
                server.why_out, server.failing = why, True
            self._changed.notify_all()

    def answered(self, server: Server) -> None:
        with self._changed:
            server.failing = False

    def is_out(self, server: Server) -> bool:
        with self._changed:
            return server.out_until > time.monotonic()

    def others_in_rotation(self, server: Server) -> bool:
        with self._changed:
            return any(s is not server for s in self._in_rotation())

    def revive_if_all_out(self) -> None:
        """A new run gives every server a new chance when none is in rotation, as a teacher with one
        server always had; a server out while others are up stays out for its cooldown."""
        with self._changed:
            if not self._in_rotation():
                for server in self.servers:
                    server.out_until = 0.0

    def why_all_out(self) -> str:
        if len(self.servers) == 1:
            return self.servers[0].why_out
        reasons = "; ".join(s.why_out or f"{s.url}: out of rotation" for s in self.servers)
        return f"every server of this teacher is out of rotation: {reasons}"
