"""Actuators: how a desired document becomes real on this node.

An actuator answers two questions, ``current()`` (what the node looks like now, in the shape of
the desired document, so the plan can diff the two) and ``apply(desired)`` (make it so). Built in:

- ``FilesActuator``: keeps ``desired.json`` in the state dir, and writes each entry of the
  document's ``files`` map (relative path -> text) under the state dir. A local edit to one of
  those files shows up in ``current()`` and is put back on the next cycle.
- ``CommandActuator``: runs ``--apply-cmd`` with the document on stdin; exit 0 means applied.
- ``MemoryActuator``: state in memory, for simulated agents and benchmarks.

Write your own by implementing the ``Actuator`` protocol.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from services.reconciler.state import atomic_write, read_json_object
from shared.codec import encode_document

DESIRED_FILE = "desired.json"
RESERVED = frozenset({DESIRED_FILE, "applied.json"})
STDERR_TAIL = 2000


@dataclass(frozen=True)
class ApplyResult:
    """What an apply did and what went wrong; ``ok`` means fully applied."""

    ok: bool
    applied: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


class Actuator(Protocol):
    """Turns a desired document into reality on the node."""

    async def current(self) -> dict[str, Any]:
        """The node's state now, shaped like the desired document."""
        ...

    async def apply(self, desired: Mapping[str, Any], *, revision: int) -> ApplyResult:
        """Make the node match ``desired``; never raise for an expected failure, report it."""
        ...


class MemoryActuator:
    """Keeps the applied document in memory; counts applies."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.applies = 0

    async def current(self) -> dict[str, Any]:
        return self.state

    async def apply(self, desired: Mapping[str, Any], *, revision: int) -> ApplyResult:
        self.state = copy.deepcopy(dict(desired))
        self.applies += 1
        return ApplyResult(True, applied=(f"revision {revision} in memory",))


def safe_relative(root: Path, name: str) -> Path:
    """``root/name`` if ``name`` is relative and stays under ``root``; else ValueError."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"file path {name!r} is empty or not text")
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("..", "") for part in pure.parts):
        raise ValueError(f"file path {name!r} must be relative and must not contain '..'")
    if len(pure.parts) == 1 and pure.parts[0] in RESERVED:
        raise ValueError(f"file path {name!r} is reserved for the agent")
    target = root.joinpath(*pure.parts)
    if not target.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"file path {name!r} leaves the state dir")
    return target


def _files_of(doc: Mapping[str, Any]) -> dict[str, str]:
    files = doc.get("files")
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)}


class FilesActuator:
    """``desired.json`` plus the document's ``files`` map, written under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        self.desired_path = self.root / DESIRED_FILE

    async def current(self) -> dict[str, Any]:
        stored = read_json_object(self.desired_path)
        if stored is None:
            return {}
        if "files" in stored and isinstance(stored["files"], dict):
            on_disk: dict[str, Any] = {}
            for name in _files_of(stored):
                try:
                    on_disk[name] = safe_relative(self.root, name).read_text()
                except (OSError, ValueError, UnicodeDecodeError):
                    continue  # missing or unreadable: absent, so it shows as drift
            stored["files"] = on_disk
        return stored

    async def apply(self, desired: Mapping[str, Any], *, revision: int) -> ApplyResult:
        files = desired.get("files", {})
        if not isinstance(files, dict):
            return ApplyResult(False, errors=("'files' must be a map of relative path to text",))
        targets: dict[Path, str] = {}
        errors: list[str] = []
        for name, content in files.items():
            if not isinstance(content, str):
                errors.append(f"files.{name}: content must be text, got {type(content).__name__}")
                continue
            try:
                targets[safe_relative(self.root, name)] = content
            except ValueError as e:
                errors.append(str(e))
        if errors:
            return ApplyResult(False, errors=tuple(errors))
        return await asyncio.to_thread(self._write, dict(desired), targets)

    def _write(self, desired: dict[str, Any], targets: dict[Path, str]) -> ApplyResult:
        applied: list[str] = []
        try:
            for path, content in targets.items():
                try:
                    same = path.read_text() == content
                except (OSError, UnicodeDecodeError):
                    same = False
                if not same:
                    atomic_write(path, content.encode())
                    applied.append(f"wrote {path.relative_to(self.root)}")
            old = read_json_object(self.desired_path) or {}
            for name in _files_of(old):
                try:
                    path = safe_relative(self.root, name)
                except ValueError:
                    continue
                if path not in targets and path.exists():
                    path.unlink()
                    applied.append(f"removed {name}")
            atomic_write(self.desired_path, encode_document(desired))
            applied.append(f"wrote {DESIRED_FILE}")
        except OSError as e:
            return ApplyResult(False, applied=tuple(applied), errors=(f"write failed: {e}",))
        return ApplyResult(True, applied=tuple(applied))


class CommandActuator:
    """Runs a shell command with the desired document (JSON) on stdin; exit 0 means applied.

    The command also gets ``FLEETWATCH_REVISION`` in its environment. The last document it
    applied is kept in ``desired.json``: that is the "current" state the plan diffs against.
    """

    def __init__(self, command: str, *, state_dir: Path, timeout: float) -> None:
        self.command = command
        self.timeout = timeout
        self.desired_path = Path(state_dir) / DESIRED_FILE

    async def current(self) -> dict[str, Any]:
        return read_json_object(self.desired_path) or {}

    async def apply(self, desired: Mapping[str, Any], *, revision: int) -> ApplyResult:
        body = json.dumps(dict(desired), sort_keys=True).encode()
        env = dict(os.environ, FLEETWATCH_REVISION=str(revision))
        try:
            proc = await asyncio.create_subprocess_shell(
                self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            return ApplyResult(False, errors=(f"cannot start apply command: {e}",))
        try:
            _, err = await asyncio.wait_for(proc.communicate(body), self.timeout)
        except TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
            return ApplyResult(False, errors=(f"apply command timed out after {self.timeout}s",))
        stderr = err.decode(errors="replace").strip()[-STDERR_TAIL:]
        if proc.returncode != 0:
            errors = [f"apply command exited with {proc.returncode}"]
            if stderr:
                errors.append(f"stderr: {stderr}")
            return ApplyResult(False, errors=tuple(errors))
        try:
            await asyncio.to_thread(atomic_write, self.desired_path, encode_document(dict(desired)))
        except OSError as e:
            return ApplyResult(False, errors=(f"applied, but recording it failed: {e}",))
        applied = [f"apply command exited 0 for revision {revision}"]
        if stderr:
            applied.append(f"stderr: {stderr}")
        return ApplyResult(True, applied=tuple(applied))
