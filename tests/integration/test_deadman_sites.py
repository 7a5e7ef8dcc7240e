"""A site alert open across a deadman restart still resolves exactly once, with its id."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, wait_for
from tests.integration.test_deadman_support import Beater, alerts, running


async def beat_group(group: list[Beater], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for b in group:
            await b.beat()
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


async def test_site_alert_survives_restart(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Site down, deadman restarts, site returns: one site firing, one site resolve (same id),
    node alerts are warnings and each resolves once."""
    col = await Collector.on(nc, subjects.alert_all)
    site = [Beater(nc, subjects, f"dc1/n{i}") for i in range(5)]
    other = [Beater(nc, subjects, f"dc2/n{i}") for i in range(2)]
    stop_site, stop_other = asyncio.Event(), asyncio.Event()
    t_other = asyncio.create_task(beat_group(other, stop_other))
    async with running(nats_server.url, prefix, startup_grace=0.0):
        t_site = asyncio.create_task(beat_group(site, stop_site))
        await asyncio.sleep(0.4)
        stop_site.set()
        await t_site
        await wait_for(lambda: sum(1 for _, a in alerts(col) if a.kind == "silent") >= 5, timeout=6)
    async with running(nats_server.url, prefix, startup_grace=0.5):
        stop_site.clear()
        t_site = asyncio.create_task(beat_group(site, stop_site))
        await wait_for(
            lambda: sum(1 for _, a in alerts(col) if a.state == "resolved") >= 6, timeout=6
        )
        await asyncio.sleep(0.3)
        stop_site.set()
        await t_site
    stop_other.set()
    await t_other
    sites = [(a.state, a.id) for _, a in alerts(col) if a.kind == "site"]
    assert [s for s, _ in sites] == ["firing", "resolved"] and sites[0][1] == sites[1][1]
    nodes = [a for _, a in alerts(col) if a.kind == "silent"]
    assert sorted(a.state for a in nodes) == ["firing"] * 5 + ["resolved"] * 5
    assert {a.severity for a in nodes} == {"warning"}
