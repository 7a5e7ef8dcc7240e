"""Node identity: ``SITE/NODE`` for people, ``SITE.NODE`` on subjects and KV keys."""

from __future__ import annotations

import re
from typing import NamedTuple

from shared.errors import InvalidNodeId

_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_part(value: str, what: str) -> str:
    """Return ``value`` if it is a valid site or node name, else raise InvalidNodeId."""
    if not isinstance(value, str):
        raise InvalidNodeId(f"{what} must be a string, got {type(value).__name__}")
    if _PART.fullmatch(value) is None:
        if not value:
            raise InvalidNodeId(f"{what} is empty")
        if len(value) > 64:
            raise InvalidNodeId(f"{what} {value[:20]!r}... is {len(value)} characters (at most 64)")
        bad = next((c for c in value if _PART.fullmatch(c) is None), "")
        raise InvalidNodeId(
            f"{what} {value!r} contains {bad!r}: only letters, digits, '_' and '-' are allowed"
        )
    return value


class NodeId(NamedTuple):
    """A validated node identity."""

    site: str
    node: str

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse ``SITE/NODE`` as typed by a person."""
        if not isinstance(text, str):
            raise InvalidNodeId(f"node id must be a string, got {type(text).__name__}")
        parts = text.split("/")
        if len(parts) != 2:
            raise InvalidNodeId(f"node id {text!r} must be SITE/NODE with exactly one '/'")
        return cls.of(parts[0], parts[1])

    @classmethod
    def of(cls, site: str, node: str) -> NodeId:
        """Build from the two parts, validating each."""
        return cls(check_part(site, "site"), check_part(node, "node"))

    @classmethod
    def from_key(cls, key: str) -> NodeId:
        """Parse the ``SITE.NODE`` form used in KV keys."""
        parts = key.split(".")
        if len(parts) != 2:
            raise InvalidNodeId(f"key {key!r} must be SITE.NODE")
        return cls.of(parts[0], parts[1])

    @property
    def key(self) -> str:
        """The ``SITE.NODE`` form for subjects and KV keys."""
        return f"{self.site}.{self.node}"

    def __str__(self) -> str:
        return f"{self.site}/{self.node}"
