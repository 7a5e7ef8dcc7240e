"""The deadman repairs JetStream pieces deleted under it instead of failing for ever."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from shared.codec import decode
from shared.models import Alert
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, wait_for
from tests.integration.test_deadman_support import Beater, running


async def test_deleted_alert_stream_and_state_bucket_come_back(
    nats_server: EmbeddedServer, nc: NATS, prefix: str
) -> None:
    """With FLEET_ALERTS and the state bucket deleted at runtime, a silent node's page is still
    stored (the stream is recreated), core subscribers see it only a few times, and state saves
    recover."""
    subjects = Subjects(prefix)
    js = nc.jetstream()
    async with running(nats_server.url, prefix, window=1.0, pending=0.5, persist_every=0.5):
        beater = Beater(nc, subjects, "dc1/n1")
        await beater.beat()
        core = await Collector.on(nc, subjects.alert_silent(beater.node))
        await js.delete_stream(subjects.alerts_stream)
        await js.delete_key_value(subjects.state_bucket("deadman"))

        async def stored() -> bool:
            try:
                msg = await js.get_last_msg(
                    subjects.alerts_stream, subjects.alert_silent(beater.node)
                )
            except NotFoundError:
                return False
            return decode(Alert, msg.data).state == "firing"

        await wait_for(stored, timeout=20, what="the page stored in a recreated stream")
        firings = [m for _, m in core.messages if decode(Alert, m.data).state == "firing"]
        assert 1 <= len(firings) <= 4, f"{len(firings)} copies on the core subject"

        async def bucket_back() -> bool:
            try:
                await js.key_value(subjects.state_bucket("deadman"))
            except NotFoundError:
                return False
            return True

        await wait_for(bucket_back, timeout=10, what="the state bucket recreated")
