"""The files actuator, the state files and the SDK's liveness (temporary dirs, a fake clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.reconciler.actuators import FilesActuator, MemoryActuator, safe_relative
from services.reconciler.plan import diff
from services.reconciler.sdk import Liveness
from services.reconciler.state import FileRevisions, MemoryRevisions
from shared.clock import FakeClock


async def test_files_actuator_writes_files_and_desired_json(tmp_path: Path) -> None:
    """apply writes each files entry and desired.json under the state dir; current reads them."""
    act = FilesActuator(tmp_path)
    doc = {"files": {"etc/app.conf": "port=1\n", "motd": "hi"}, "replicas": 2}
    assert diff(doc, await act.current()) != []
    result = await act.apply(doc, revision=3)
    assert result.ok, result.errors
    assert (tmp_path / "etc/app.conf").read_text() == "port=1\n"
    assert await act.current() == doc


async def test_local_edits_are_drift(tmp_path: Path) -> None:
    """Editing or deleting a managed file shows up as drift on the next current()."""
    act = FilesActuator(tmp_path)
    doc = {"files": {"a": "1", "b": "2"}}
    await act.apply(doc, revision=1)
    (tmp_path / "a").write_text("edited")
    (tmp_path / "b").unlink()
    assert diff(doc, await act.current()) == ["files.a: changed", "files.b: missing"]
    assert (await act.apply(doc, revision=1)).ok
    assert diff(doc, await act.current()) == []


async def test_files_dropped_from_the_document_are_removed(tmp_path: Path) -> None:
    """A file no longer in the desired document is removed on apply."""
    act = FilesActuator(tmp_path)
    await act.apply({"files": {"a": "1", "b": "2"}}, revision=1)
    result = await act.apply({"files": {"a": "1"}}, revision=2)
    assert result.ok and "removed b" in result.applied
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"../escape": "x"}, "must be relative"),
        ({"/etc/passwd": "x"}, "must be relative"),
        ({"desired.json": "x"}, "reserved"),
        ({"a": 5}, "must be text"),
        ("notamap", "map"),
    ],
)
async def test_bad_files_entries_change_nothing(
    tmp_path: Path, files: object, fragment: str
) -> None:
    """A files map that would escape the state dir, or is malformed, is refused whole."""
    act = FilesActuator(tmp_path)
    result = await act.apply({"files": files}, revision=1)
    assert not result.ok
    assert fragment in " ".join(result.errors)
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - a tmp dir listing


def test_safe_relative_accepts_nested_paths(tmp_path: Path) -> None:
    """A plain nested relative path resolves under the root."""
    assert safe_relative(tmp_path, "a/b/c.txt") == tmp_path / "a" / "b" / "c.txt"


async def test_memory_actuator_keeps_a_copy() -> None:
    """The memory actuator stores a copy, so later edits to the input are drift."""
    act = MemoryActuator()
    doc = {"x": {"y": 1}}
    await act.apply(doc, revision=1)
    doc["x"]["y"] = 2
    assert await act.current() == {"x": {"y": 1}}


def test_file_revisions_survive_a_new_instance(tmp_path: Path) -> None:
    """The applied revision is read back by a later process (a new store on the same dir)."""
    FileRevisions(tmp_path).save(7)
    assert FileRevisions(tmp_path).load() == 7
    (tmp_path / "applied.json").write_text("garbage")
    assert FileRevisions(tmp_path).load() is None
    assert MemoryRevisions(3).load() == 3


def test_liveness_goes_stale_when_not_touched() -> None:
    """Liveness is fresh only within max_age of the last touch."""
    clock = FakeClock()
    live = Liveness(clock=clock, max_age=5.0)
    assert not live.fresh() and live.age() is None
    live.touch()
    clock.advance(4.9)
    assert live.fresh()
    clock.advance(0.2)
    assert not live.fresh()
    live.touch(0)
    assert live.fresh() and live.count == 1 and live.touches == 2
