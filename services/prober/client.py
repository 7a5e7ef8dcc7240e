"""One HTTP probe: a new connection, a whole-request deadline, no redirects, a capped body.

One ``asyncio.timeout`` wraps everything from name resolution to the last body byte, so a
server that trickles its headers or body one byte a second cannot stretch a probe past its
deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from services.prober.verdict import classify_error
from shared.clock import Clock
from shared.models import Verdict

_CHUNK = 16 * 1024


@dataclass(frozen=True)
class Answer:
    """What came back over HTTP (status and body), or the transport failure instead."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    truncated: bool
    latency: float
    failure: Verdict | None = None
    failure_detail: str = ""


class DirectConnector(aiohttp.TCPConnector):
    """A connector that opens a single-address, plain-TCP connection in one event-loop call.

    aiohttp (3.10+) routes every connect through aiohappyeyeballs, which builds the socket in
    Python and then hands it to the loop; with one address there is nothing to race, and letting
    uvloop connect in C cut the prober's CPU per probe by about a fifth (bench/prober.py).
    Anything else (several addresses, TLS) takes aiohttp's own path unchanged.
    """

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: Any,
        timeout: Any,
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> Any:
        if len(addr_infos) == 1 and not kwargs.get("ssl"):
            family, _type, proto, _name, address = addr_infos[0]
            loop: Any = self._loop  # aiohttp passes protocol factory and ssl args positionally
            try:
                return await loop.create_connection(
                    *args, host=address[0], port=address[1], family=family, proto=proto, **kwargs
                )
            except OSError as exc:
                raise client_error(req.connection_key, exc) from exc
        return await super()._wrap_create_connection(
            *args,
            addr_infos=addr_infos,
            req=req,
            timeout=timeout,
            client_error=client_error,
            **kwargs,
        )


def make_session(*, user_agent: str = "fleetwatch-prober") -> aiohttp.ClientSession:
    """A session whose every request opens (and then closes) its own connection."""
    connector = DirectConnector(
        force_close=True,  # no keep-alive: each probe proves the node still accepts connections
        limit=0,  # the service bounds concurrency itself
        ttl_dns_cache=None,
        use_dns_cache=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        headers={"User-Agent": user_agent, "Accept": "application/json"},
        auto_decompress=True,
        skip_auto_headers=("Accept-Encoding",),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def fetch(
    session: aiohttp.ClientSession,
    url: str | URL,
    *,
    deadline: float,
    max_body: int,
    clock: Clock,
) -> Answer:
    """GET ``url`` once within ``deadline`` seconds; never raises for network trouble."""
    start = clock.monotonic()
    try:
        async with asyncio.timeout(deadline):
            async with session.get(url, allow_redirects=False) as resp:
                length = resp.content_length
                if length is not None:
                    # announced size: refuse an oversized body unread, else read it in one go
                    truncated = length > max_body
                    body = b"" if truncated else await resp.read()
                else:
                    body, truncated = await _read_capped(resp, max_body)
                headers = {
                    k: resp.headers[k] for k in ("Content-Type", "Location") if k in resp.headers
                }
                status = resp.status
                if truncated:
                    resp.close()  # drop the rest of a huge body instead of draining it
        return Answer(status, headers, body, truncated, clock.monotonic() - start)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        verdict, detail = classify_error(e)
        return Answer(None, {}, b"", False, clock.monotonic() - start, verdict, detail)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Read a body of unknown length up to ``limit`` bytes; say whether there was more."""
    body = bytearray()
    while True:
        chunk = await resp.content.read(_CHUNK)
        if not chunk:
            return bytes(body), False
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
