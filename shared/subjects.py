"""Every subject, bucket and stream name fleetwatch uses, built in one place.

The prefix (``fleet`` by default) lets several fleets, or several tests, share one broker:
subjects start with it, buckets are ``PREFIX_nodes`` / ``PREFIX_desired``, and the alert stream is
``PREFIX_ALERTS`` (upper case), so the default names are exactly those of DESIGN.md.
"""

from __future__ import annotations

import re

from shared.identity import NodeId, check_part

DEFAULT_PREFIX = "fleet"
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}")


def check_prefix(prefix: str) -> str:
    """Validate a subject prefix (one token, usable in bucket and stream names)."""
    if _PREFIX.fullmatch(prefix) is None:
        raise ValueError(
            f"prefix {prefix!r} must be 1-32 letters, digits, '_' or '-' (one subject token)"
        )
    return prefix


class Subjects:
    """Names for one fleet (one prefix)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = check_prefix(prefix)
        p = self.prefix
        # wildcards for subscribers
        self.hb_all = f"{p}.hb.*.*"
        self.reconcile_all = f"{p}.reconcile.*.*"
        self.probe_all = f"{p}.probe.*.*"
        self.alert_all = f"{p}.alert.>"
        # buckets and streams
        self.nodes_bucket = f"{p}_nodes"
        self.desired_bucket = f"{p}_desired"
        self.alerts_stream = f"{p.upper()}_ALERTS"

    # per-node subjects
    def hb(self, node: NodeId) -> str:
        return f"{self.prefix}.hb.{node.key}"

    def reconcile(self, node: NodeId) -> str:
        return f"{self.prefix}.reconcile.{node.key}"

    def probe(self, node: NodeId) -> str:
        return f"{self.prefix}.probe.{node.key}"

    def alert_silent(self, node: NodeId) -> str:
        return f"{self.prefix}.alert.silent.{node.key}"

    def alert_probe(self, node: NodeId) -> str:
        return f"{self.prefix}.alert.probe.{node.key}"

    def alert_site(self, site: str) -> str:
        return f"{self.prefix}.alert.site.{check_part(site, 'site')}"

    def alert_self(self, service: str, instance: str) -> str:
        return (
            f"{self.prefix}.alert.self.{check_part(service, 'service')}."
            f"{check_part(instance, 'instance')}"
        )

    def state_bucket(self, service: str) -> str:
        """The KV bucket a service persists its own state in."""
        return f"{self.prefix}_{check_part(service, 'service')}_state"

    def inbox_canary(self, service: str, instance: str) -> str:
        """A subject a service sends itself through the broker to prove it can see."""
        return f"{self.prefix}.canary.{service}.{instance}"

    def service_status(self, service: str) -> str:
        """Request-reply subject where a service answers with its current view (JSON)."""
        return f"{self.prefix}.svc.{check_part(service, 'service')}.status"

    def service_request(self, service: str, verb: str) -> str:
        """Request-reply subject for a verb a service answers (e.g. ``up`` restarts an agent)."""
        return f"{self.prefix}.svc.{check_part(service, 'service')}.{check_part(verb, 'verb')}"

    def node_of(self, subject: str, kind: str) -> NodeId:
        """The node named by ``PREFIX.KIND.SITE.NODE`` (``kind`` may hold dots, e.g. alert.silent).

        Raises InvalidNodeId when the subject does not have that shape.
        """
        head = f"{self.prefix}.{kind}."
        if not subject.startswith(head):
            from shared.errors import InvalidNodeId

            raise InvalidNodeId(f"subject {subject!r} does not start with {head!r}")
        return NodeId.from_key(subject[len(head) :])
