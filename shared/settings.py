"""Settings base: every flag has an environment twin ``FLEETWATCH_<SERVICE>_<FLAG>``.

A service declares one ``ServiceSettings`` subclass; ``load_settings`` builds its argparse parser
from the fields, lets pydantic-settings read the environment for flags not given, and turns any
validation error into a one-line message naming the flag (or variable) and exit status 2.
Precedence: command line, then ``FLEETWATCH_<SERVICE>_<FLAG>``, then (for ``--nats`` only)
``FLEETWATCH_NATS_URL``, then the default.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn, TypeVar

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.identity import check_part
from shared.subjects import DEFAULT_PREFIX, check_prefix

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

S = TypeVar("S", bound="ServiceSettings")


def check_nats_url(value: str) -> str:
    """A NATS server URL, or several separated by commas; ValueError naming the bad one."""
    for url in value.split(","):
        url = url.strip()
        if not url.startswith(("nats://", "tls://", "ws://", "wss://")) or "://" == url[-3:]:
            raise ValueError(f"{url!r} is not a NATS URL (expected nats://HOST:PORT)")
    return value


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set ``service`` and ``model_config``."""

    model_config = SettingsConfigDict(env_prefix="FLEETWATCH_", extra="forbid", frozen=True)
    service: ClassVar[str] = "service"

    nats: str = DEFAULT_NATS_URL
    prefix: str = DEFAULT_PREFIX
    log_level: str = "info"

    @field_validator("nats")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        return check_nats_url(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_prefix(value)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()


def env_name(cls: type[ServiceSettings], field: str) -> str:
    """The environment twin of a settings field."""
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def flag_name(field: str) -> str:
    """The command-line flag of a settings field."""
    return "--" + field.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _is_list(typing.get_args(annotation)[0])
    return False


def build_parser(
    cls: type[ServiceSettings], prog: str, description: str = ""
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per settings field; defaults are left to pydantic."""
    parser = _Parser(prog=prog, description=description or cls.__doc__)
    for name, field in cls.model_fields.items():
        flag = flag_name(name)
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        else:
            default = repr(field.default)
        help_text = f"{field.description or ''} [env {env_name(cls, name)}; default {default}]"
        if field.annotation is bool:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif _is_list(field.annotation):
            parser.add_argument(
                flag,
                dest=name,
                action="append",
                default=argparse.SUPPRESS,
                metavar=name.upper(),
                help=help_text + " (repeatable)",
            )
        else:
            parser.add_argument(
                flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text
            )
    return parser


def load_settings(
    cls: type[S],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> S:
    """Parse flags, fill the rest from the environment, validate; exit 2 naming what was wrong."""
    environ = os.environ if environ is None else environ
    parser = build_parser(cls, prog or f"fleetwatch {cls.service}")
    given = vars(parser.parse_args(sys.argv[1:] if argv is None else list(argv)))
    if "nats" in cls.model_fields and "nats" not in given:
        if env_name(cls, "nats") not in environ and "FLEETWATCH_NATS_URL" in environ:
            given["nats"] = environ["FLEETWATCH_NATS_URL"]
    try:
        return cls(**given)
    except ValidationError as e:
        parser.error(settings_error(cls, e, given))


def settings_error(
    cls: type[ServiceSettings], error: ValidationError, given: Mapping[str, Any]
) -> str:
    """One line naming the flag or environment variable that was wrong."""
    parts = []
    for err in error.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        if field in given:
            where = flag_name(field)
        elif field in cls.model_fields:
            where = f"{flag_name(field)} (from {env_name(cls, field)})"
            if err["type"] == "missing":
                where = f"{flag_name(field)} (or {env_name(cls, field)})"
        else:
            where = field or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "extra_forbidden":
            msg = "is not a known setting"
        got = err.get("input")
        tail = "" if err["type"] in {"missing"} or isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{where}: {msg}{tail}")
    return "; ".join(parts)


def service_config(service: str) -> SettingsConfigDict:
    """The ``model_config`` of a service's settings: env twins ``FLEETWATCH_<SERVICE>_<FLAG>``."""
    return SettingsConfigDict(
        env_prefix=f"FLEETWATCH_{service.upper()}_", extra="forbid", frozen=True
    )


def default_instance(fallback: str = "instance") -> str:
    """``hostname-pid`` reduced to the characters a subject token may hold."""
    raw = f"{socket.gethostname()}-{os.getpid()}"
    return (re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-") or fallback)[-64:]


def instance_name(value: str, fallback: str = "instance") -> str:
    """A service instance's name for subjects: the given one, validated, or ``hostname-pid``."""
    return check_part(value or default_instance(fallback), "instance")
