"""Node identity rules at the edge."""

from __future__ import annotations

import pytest

from shared.errors import InvalidNodeId
from shared.identity import NodeId


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("dc1.x/n1", "'.'"),
        ("dc1/n 1", "' '"),
        ("dc1/n1/x", "exactly one '/'"),
        ("/n1", "site is empty"),
        ("dc1/", "node is empty"),
        ("dc1n1", "exactly one '/'"),
        ("dc1/n*", "'*'"),
        ("dc1/>", "'>'"),
        ("dc1/nö", "'ö'"),
        ("dc1/" + "a" * 65, "65 characters"),
    ],
)
def test_bad_node_ids_are_refused_with_the_reason(text: str, fragment: str) -> None:
    """Each malformed SITE/NODE is refused with an error that names what is wrong."""
    with pytest.raises(InvalidNodeId) as err:
        NodeId.parse(text)
    assert fragment in str(err.value)


def test_good_node_id_round_trips_through_key_form() -> None:
    """SITE/NODE and SITE.NODE are two spellings of the same identity."""
    n = NodeId.parse("dc-1/node_" + "a" * 59)
    assert str(n) == "dc-1/node_" + "a" * 59
    assert NodeId.from_key(n.key) == n


def test_key_form_rejects_extra_tokens() -> None:
    """A KV key must be exactly two tokens."""
    with pytest.raises(InvalidNodeId):
        NodeId.from_key("a.b.c")
