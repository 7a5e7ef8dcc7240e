"""Argument helpers shared by the operator commands (not the services, which use settings)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import NoReturn

from shared.durations import parse_duration
from shared.errors import InvalidDuration, InvalidNodeId
from shared.identity import NodeId
from shared.settings import DEFAULT_NATS_URL, check_nats_url
from shared.subjects import DEFAULT_PREFIX, check_prefix


class Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line naming the bad argument."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def node_id(text: str) -> NodeId:
    """argparse type for SITE/NODE."""
    try:
        return NodeId.parse(text)
    except InvalidNodeId as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def duration(text: str) -> float:
    """argparse type for a duration."""
    try:
        return parse_duration(text)
    except InvalidDuration as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def prefix(text: str) -> str:
    """argparse type for a subject prefix."""
    try:
        return check_prefix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def nats_url(text: str) -> str:
    """argparse type for a NATS URL."""
    try:
        return check_nats_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_connection(parser: argparse.ArgumentParser) -> None:
    """``--nats`` and ``--prefix`` with their environment defaults."""
    parser.add_argument(
        "--nats",
        type=nats_url,
        default=os.environ.get("FLEETWATCH_NATS_URL", DEFAULT_NATS_URL),
        help="NATS URL [env FLEETWATCH_NATS_URL; default %(default)s]",
    )
    parser.add_argument(
        "--prefix",
        type=prefix,
        default=os.environ.get("FLEETWATCH_PREFIX", DEFAULT_PREFIX),
        help="subject prefix [env FLEETWATCH_PREFIX; default %(default)s]",
    )


def whole_number(
    what: str, *, lo: int | None = None, hi: int | None = None, also: tuple[int, ...] = ()
) -> Callable[[str], int]:
    """argparse type for an integer in [lo, hi] (either end open), or one of ``also``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if n in also or ((lo is None or n >= lo) and (hi is None or n <= hi)):
            return n
        if hi is None:
            bounds = f"at least {lo}"
        elif lo is None:
            bounds = f"at most {hi}"
        else:
            bounds = f"{lo}-{hi}"
        extra = "".join(f", or {a}" for a in also)
        raise argparse.ArgumentTypeError(f"{what} {n} is out of range ({bounds}{extra})")

    return parse
