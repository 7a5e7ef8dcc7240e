"""The probe client against real loopback HTTP endpoints, one endpoint per case of issue 6."""

from __future__ import annotations

import asyncio
import time

from services.prober.client import fetch, make_session
from services.prober.verdict import Judgement, Rules, judge
from shared.clock import SystemClock
from tests.integration.test_prober_support import (
    Endpoint,
    Writer,
    answer,
    case_behaviours,
    endpoints,
    fresh_body,
    json200,
    refused_url,
    response,
    unsized,
)

TIMEOUT = 0.8
RULES = Rules(max_age=3.0, future_tolerance=2.0)


async def probe(url: str) -> tuple[Judgement, float]:
    """One probe through the real client, judged like the service does."""
    clock = SystemClock()
    async with make_session() as session:
        a = await fetch(session, url, deadline=TIMEOUT, max_body=RULES.max_body, clock=clock)
    if a.failure is not None or a.status is None:
        return Judgement(a.failure or "refused", None, a.failure_detail), a.latency
    return judge(
        status=a.status,
        headers=a.headers,
        body=a.body,
        truncated=a.truncated,
        now=time.time(),
        rules=RULES,
    ), a.latency


async def test_every_case_gets_its_verdict() -> None:
    """Each endpoint of the issue's list gets exactly its verdict, within the deadline."""
    async with endpoints({"landing": json200(fresh_body)}) as landing:
        cases = case_behaviours(landing["landing"].url)
        async with endpoints({k: b for k, (b, _) in cases.items()}) as eps:
            urls = {k: e.url for k, e in eps.items()} | {"refused": refused_url()}
            want = {k: v for k, (_, v) in cases.items()} | {"refused": "refused"}
            results = await asyncio.gather(*(probe(u) for u in urls.values()))
            got = {k: r[0].verdict for k, r in zip(urls, results, strict=True)}
            assert got == want, {k: results[i][0].detail for i, k in enumerate(urls)}
            for _, latency in results:
                assert latency < TIMEOUT + 0.5  # the deadline covers the whole request
            # the 302 was not followed
            assert landing["landing"].hits == 0


async def test_huge_body_is_cut_at_the_limit_quickly() -> None:
    """A 10 MB body is refused as bad_body after reading only up to the limit."""
    async with endpoints({"big": case_behaviours("http://127.0.0.1:9/")["10MB"][0]}) as eps:
        j, latency = await probe(eps["big"].url)
    assert j.verdict == "bad_body" and "larger than" in j.detail
    assert latency < TIMEOUT


async def test_each_probe_opens_a_new_connection() -> None:
    """Three probes through one session make three connections even to a keep-alive server."""
    keep = Endpoint(answer(lambda: response(200, fresh_body(), close=False)), keep_alive=True)
    ep = await keep.start()
    try:
        clock = SystemClock()
        async with make_session() as session:
            for _ in range(3):
                a = await fetch(session, ep.url, deadline=TIMEOUT, max_body=65536, clock=clock)
                assert a.status == 200
        assert ep.hits == 3
        assert ep.connections == 3
    finally:
        await ep.stop()


async def test_body_without_length_is_read_to_the_end_or_cut_at_the_limit() -> None:
    """Without Content-Length a small body is judged; a 10 MB one is cut at the limit."""
    async with endpoints({"small": unsized(), "big": unsized(10 * 1024 * 1024)}) as eps:
        (small, _), (big, latency) = await asyncio.gather(
            probe(eps["small"].url), probe(eps["big"].url)
        )
    assert small.verdict == "fresh"
    assert big.verdict == "bad_body" and "larger than" in big.detail
    assert latency < TIMEOUT


async def test_broken_answers_are_named() -> None:
    """Garbage instead of HTTP is http_error; a body cut short is bad_body; hang-up is refused."""

    async def garbage(w: Writer) -> None:
        w.write(b"garbage here\r\n\r\n")

    async def cut_short(w: Writer) -> None:
        w.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ts":')

    async def hang_up(w: Writer) -> None:
        return None

    async with endpoints({"g": garbage, "c": cut_short, "h": hang_up}) as eps:
        got = await asyncio.gather(*(probe(eps[k].url) for k in ("g", "c", "h")))
    assert [j.verdict for j, _ in got] == ["http_error", "bad_body", "refused"]


async def test_a_host_name_takes_the_general_connect_path() -> None:
    """A name (localhost, from /etc/hosts) connects too; one IP literal uses the direct path."""
    async with endpoints({"n": json200(fresh_body)}) as eps:
        by_name, _ = await probe(eps["n"].url.replace("127.0.0.1", "localhost"))
        by_ip, _ = await probe(eps["n"].url)
    assert (by_name.verdict, by_ip.verdict) == ("fresh", "fresh")
