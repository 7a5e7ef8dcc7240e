"""``fleetwatch agent`` settings: one flag per field, env twins ``FLEETWATCH_AGENT_<FLAG>``."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from platformdirs import user_data_dir
from pydantic import Field, field_validator

from services.reconciler.plan import default_max_age, expand_node
from shared.durations import Duration, Interval, PositiveDuration
from shared.identity import NodeId
from shared.settings import ServiceSettings, service_config

# ``register`` is also ABCMeta.register; the flag name is part of the interface, so keep it.
warnings.filterwarnings("ignore", message='Field name "register" in "AgentSettings"')


class AgentSettings(ServiceSettings):
    """The node agent: re-read the desired state every cycle, apply it, then heartbeat."""

    model_config = service_config("agent")
    service: ClassVar[str] = "agent"

    node: str = Field(description="this node, SITE/NODE (SITE/@hostname: this machine's name)")
    interval: Interval = Field(
        30.0, description="seconds between cycles (each jittered by up to 10 percent)"
    )
    health_port: int = Field(
        9100,
        ge=0,
        le=65535,
        description="/healthz and /metrics port; 0 = any free",
    )
    health_host: str = Field("127.0.0.1", description="address the health server binds")
    state_dir: Path | None = Field(
        None,
        description="where applied state is kept (default: per node under the user data dir)",
    )
    apply_cmd: str | None = Field(
        None,
        description="shell command applying the desired JSON on stdin",
    )
    apply_timeout: PositiveDuration = Field(30.0, description="how long --apply-cmd may run")
    read_timeout: PositiveDuration = Field(2.0, description="timeout of one desired-state read")
    max_age: Duration = Field(
        0.0,
        description="/healthz fails once the last cycle is older (0 = 3.3 x interval)",
    )
    register: bool = Field(
        False,
        description="add/update this node's inventory entry with its health URL",
    )
    advertise_url: str | None = Field(
        None,
        description="health URL to register (default http://HOST:PORT/healthz)",
    )

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        return str(NodeId.parse(expand_node(value, socket.gethostname())))

    @field_validator("advertise_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @property
    def node_id(self) -> NodeId:
        """The validated node identity."""
        return NodeId.parse(self.node)

    @property
    def effective_state_dir(self) -> Path:
        """``--state-dir`` or the per-node default."""
        if self.state_dir is not None:
            return self.state_dir
        return Path(user_data_dir("fleetwatch")) / "agent" / self.prefix / self.node_id.key

    @property
    def effective_max_age(self) -> float:
        """``--max-age`` or its default from the interval."""
        return self.max_age or default_max_age(self.interval)
