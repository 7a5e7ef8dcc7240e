"""Real loopback HTTP endpoints for the prober's tests (no test functions live here).

Each endpoint is its own listening socket on 127.0.0.1 whose behaviour is written at the byte
level, so the tests can send headers slowly, trickle a body, accept and never answer, or refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

Writer = asyncio.StreamWriter
Behaviour = Callable[[Writer], Awaitable[None]]


def response(
    status: int,
    body: bytes,
    *,
    ctype: str = "application/json",
    extra: str = "",
    close: bool = True,
) -> bytes:
    """A complete HTTP/1.1 response."""
    reason = {200: "OK", 302: "Found", 404: "Not Found", 503: "Service Unavailable"}.get(
        status, "X"
    )
    conn = "Connection: close\r\n" if close else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n{conn}{extra}\r\n"
    )
    return head.encode() + body


def doc(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def fresh_body(**extra: object) -> bytes:
    """An agent-like body computed now."""
    return doc(ok=True, ts=time.time(), node="s/n", **extra)


def answer(make: Callable[[], bytes]) -> Behaviour:
    """Write one response built at request time, then close."""

    async def run(w: Writer) -> None:
        w.write(make())
        await w.drain()

    return run


def slow_headers(step: float = 0.25) -> Behaviour:
    """Send the status line and headers one byte per ``step`` seconds."""

    async def run(w: Writer) -> None:
        for byte in response(200, fresh_body()):
            w.write(bytes([byte]))
            await w.drain()
            await asyncio.sleep(step)

    return run


def trickle_body(step: float = 1.0) -> Behaviour:
    """Headers at once, then a fresh body one byte a second."""

    async def run(w: Writer) -> None:
        body = fresh_body()
        whole = response(200, body)
        head = whole[: len(whole) - len(body)]
        w.write(head)
        await w.drain()
        for byte in body:
            w.write(bytes([byte]))
            await w.drain()
            await asyncio.sleep(step)

    return run


def huge_body(size: int = 10 * 1024 * 1024) -> Behaviour:
    """A 200 whose JSON body is ``size`` bytes (fresh ts first, then padding)."""

    async def run(w: Writer) -> None:
        start = b'{"ok":true,"ts":%f,"pad":"' % time.time()
        pad = size - len(start) - 2
        w.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            + start
        )
        chunk = b"x" * 65536
        while pad > 0:
            w.write(chunk[: min(pad, len(chunk))])
            pad -= len(chunk)
            await w.drain()
        w.write(b'"}')
        await w.drain()

    return run


def unsized(body_size: int | None = None) -> Behaviour:
    """HTTP/1.0 style: no Content-Length, the body ends when the connection closes."""

    async def run(w: Writer) -> None:
        body = (
            fresh_body()
            if body_size is None
            else (b'{"ok":true,"ts":%f,"pad":"' % time.time() + b"x" * body_size + b'"}')
        )
        w.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
        for i in range(0, len(body), 65536):
            w.write(body[i : i + 65536])
            await w.drain()

    return run


async def never(w: Writer) -> None:
    """Accept, read the request, never answer."""
    await asyncio.Event().wait()


class Endpoint:
    """One listening socket with one behaviour; ``hits`` counts requests."""

    def __init__(self, behaviour: Behaviour, *, keep_alive: bool = False) -> None:
        self.behaviour = behaviour
        self.keep_alive = keep_alive  # serve many requests per connection if the client wants
        self.hits = 0
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    async def start(self) -> Endpoint:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=512)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, r: asyncio.StreamReader, w: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.connections += 1
        try:
            # swallowing our own cancellation (stop) keeps asyncio from logging it as an error
            with contextlib.suppress(Exception, asyncio.CancelledError):
                while True:
                    await r.readuntil(b"\r\n\r\n")
                    self.hits += 1
                    await self.behaviour(w)
                    if not self.keep_alive:
                        break
        finally:
            self._conns.discard(task)
            w.close()

    async def stop(self) -> None:
        for t in list(self._conns):
            t.cancel()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


def refused_url() -> str:
    """A loopback URL whose port was just closed, so connecting is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/healthz"


def rfc3339(offset: bool) -> bytes:
    """A fresh RFC 3339 timestamp, with or without its UTC offset."""
    now = datetime.now(UTC)
    text = now.isoformat() if offset else now.replace(tzinfo=None).isoformat()
    return doc(ok=True, ts=text)


def json200(make: Callable[[], bytes]) -> Behaviour:
    """A 200 JSON response whose body ``make`` builds at request time."""
    return answer(lambda: response(200, make()))


def case_behaviours(redirect_to: str) -> dict[str, tuple[Behaviour, str]]:
    """Every case of issue 6 with the verdict it must get."""
    boot = time.time() - 120  # "a body written at boot and served unchanged"
    stale = doc(ok=True, ts=boot)
    return {
        "fresh": (json200(fresh_body), "fresh"),
        "stale": (json200(lambda: stale), "stale"),
        "future_1h": (json200(lambda: doc(ok=True, ts=time.time() + 3600)), "future"),
        "millis": (json200(lambda: doc(ok=True, ts=int(time.time() * 1000))), "fresh"),
        "rfc3339_offset": (json200(lambda: rfc3339(True)), "fresh"),
        "rfc3339_naive": (json200(lambda: rfc3339(False)), "bad_body"),
        "no_ts": (json200(lambda: doc(status="ok")), "bad_body"),
        "html": (
            answer(lambda: response(200, b"<html><body>OK</body></html>", ctype="text/html")),
            "bad_body",
        ),
        "ok_false": (json200(lambda: doc(ok=False, ts=time.time())), "unhealthy"),
        "503_fresh": (answer(lambda: response(503, fresh_body())), "unhealthy"),
        "302": (
            answer(lambda: response(302, b"", extra=f"Location: {redirect_to}\r\n")),
            "redirect",
        ),
        "slow_headers": (slow_headers(), "timeout"),
        "trickle_body": (trickle_body(), "timeout"),
        "never_answers": (never, "timeout"),
        "10MB": (huge_body(), "bad_body"),
    }


@contextlib.asynccontextmanager
async def endpoints(behaviours: dict[str, Behaviour]) -> AsyncIterator[dict[str, Endpoint]]:
    """Start one endpoint per behaviour; stop them all afterwards."""
    started: dict[str, Endpoint] = {}
    try:
        for name, b in behaviours.items():
            started[name] = await Endpoint(b).start()
        yield started
    finally:
        for e in started.values():
            await e.stop()
