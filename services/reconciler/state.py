"""What the agent keeps on local disk (or, for simulated agents, in memory) between cycles and runs:
the last applied revision, so an older desired document is never applied after a newer one, even
across a restart.

Files are written atomically (temporary file, fsync, rename) so a crash leaves the old or the new
content, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from disk; None if the file is missing or not a JSON object."""
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class RevisionStore(Protocol):
    """Where the last applied desired revision survives between cycles."""

    def load(self) -> int | None:
        """The last applied revision, or None if nothing was ever applied."""
        ...

    def save(self, revision: int) -> None:
        """Record ``revision`` as applied."""
        ...


class MemoryRevisions:
    """A RevisionStore for simulated agents and tests: lives as long as the object."""

    def __init__(self, revision: int | None = None) -> None:
        self.revision = revision

    def load(self) -> int | None:
        return self.revision

    def save(self, revision: int) -> None:
        self.revision = revision


class FileRevisions:
    """A RevisionStore in ``STATE_DIR/applied.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "applied.json"
        self._cached: int | None = None
        self._loaded = False

    def load(self) -> int | None:
        if not self._loaded:
            obj = read_json_object(self.path)
            rev = obj.get("rev") if obj else None
            self._cached = rev if isinstance(rev, int) and not isinstance(rev, bool) else None
            self._loaded = True
        return self._cached

    def save(self, revision: int) -> None:
        if self._loaded and self._cached == revision:
            return
        atomic_write(self.path, json.dumps({"rev": revision}).encode())
        self._cached, self._loaded = revision, True
