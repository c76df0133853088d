"""delete_old_files never leaves its allowed directory, even when the tree changes under it,
and its run record is never more than one batch behind the disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from django.utils import timezone

from cleanups import cleanup_tasks
from cleanups.cleanup_tasks import FILES_PER_BATCH
from cleanups.models import CleanupRun
from cleanups.registry import CleanupContext, get_task

pytestmark = pytest.mark.django_db


def _old_file(path: Path, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    stamp = time.time() - 30 * 86400
    os.utime(path, (stamp, stamp))
    return path


def _params(directory: Path, **extra: object) -> dict:
    return get_task("delete_old_files").clean_params(
        {"directory": str(directory), "pattern": "*.log", "older_than_days": 7, **extra}
    )


def _files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def allowed(tmp_path, settings):
    root = tmp_path / "allowed"
    root.mkdir()
    settings.CLEANUP_ALLOWED_DIRS = [str(root)]
    return root


@pytest.fixture
def outside(tmp_path):
    """Old files the task must never touch, as the attacker's symlinks would point at them."""
    directory = tmp_path / "outside"
    for name in ("one.log", "two.log", "three.log", "b/one.log", "b/two.log", "b/three.log"):
        _old_file(directory / name)
    (directory / "b" / "empty").mkdir()
    return directory


def test_a_symlink_inside_the_allowed_dir_to_an_outside_dir_is_never_followed(allowed, outside):
    _old_file(allowed / "mine.log")
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    (allowed / "deeper").mkdir()
    (allowed / "deeper" / "link").symlink_to(outside / "b", target_is_directory=True)
    before = _files_under(outside)

    ctx = CleanupContext(_params(allowed, recursive=True, remove_empty_dirs=True))
    get_task("delete_old_files").function(ctx)

    assert _files_under(outside) == before
    assert (outside / "b" / "empty").is_dir()
    assert (allowed / "link").is_symlink() and (allowed / "deeper" / "link").is_symlink()
    assert not (allowed / "mine.log").exists()
    assert ctx.targets["files"]["items"] == 1


class SwapsADirectoryMidWalk(CleanupContext):
    """The first time the walk checks its time (after its first file), ``directory`` is moved
    aside and a symlink to ``target`` takes its place: the attacker's race, made certain."""

    def __init__(self, params: dict, *, directory: Path, target: Path) -> None:
        super().__init__(params)
        self.directory = directory
        self.target = target
        self.swapped = False

    def out_of_time(self) -> bool:
        if not self.swapped:
            self.directory.rename(self.directory.with_name("moved-aside"))
            self.directory.symlink_to(self.target, target_is_directory=True)
            self.swapped = True
        return super().out_of_time()


@pytest.mark.parametrize(
    "files_in",
    ["a", "a/b"],  # the directory being walked is swapped; or its parent, while in a child
)
def test_a_directory_swapped_for_a_symlink_during_the_walk_leads_nowhere_outside(
    allowed, outside, files_in
):
    for name in ("one.log", "two.log", "three.log"):
        _old_file(allowed / files_in / name)
    before = _files_under(outside)

    ctx = SwapsADirectoryMidWalk(
        _params(allowed, recursive=True), directory=allowed / "a", target=outside
    )
    get_task("delete_old_files").function(ctx)

    assert ctx.swapped
    assert _files_under(outside) == before
    # The walk went on in the directory it had opened (now moved aside, still allowed).
    assert _files_under(allowed / "moved-aside") == []
    assert ctx.targets["files"]["items"] == 3


@pytest.fixture
def run(make_schedule):
    schedule = make_schedule(task="delete_old_files")
    return CleanupRun.objects.create(
        schedule=schedule, iteration=1, task="delete_old_files", started_at=timezone.now()
    )


class ComparesRecordWithDisk(CleanupContext):
    """After every file, compares what the run record says with what is gone from disk, as a
    worker killed at that moment would leave them."""

    def __init__(self, params: dict, *, run: CleanupRun, files: list[Path]) -> None:
        super().__init__(params, run=run)
        self.files = files
        self.behind: list[int] = []
        self.reports: list[int] = []

    def deleted(self, target: str, count: int, bytes: int = 0) -> None:
        super().deleted(target, count, bytes=bytes)
        self.reports.append(count)

    def out_of_time(self) -> bool:
        gone = sum(not path.exists() for path in self.files)
        recorded = CleanupRun.objects.get(pk=self.run.pk).items_deleted
        self.behind.append(gone - recorded)
        return super().out_of_time()


def test_the_run_record_is_never_more_than_one_unfinished_batch_behind(allowed, run):
    files = [_old_file(allowed / f"{n:03}.log") for n in range(2 * FILES_PER_BATCH + 5)]

    ctx = ComparesRecordWithDisk(_params(allowed), run=run, files=files)
    get_task("delete_old_files").function(ctx)

    assert ctx.reports == [FILES_PER_BATCH, FILES_PER_BATCH, 5]
    assert len(ctx.behind) == len(files)
    assert min(ctx.behind) >= 0 and max(ctx.behind) < FILES_PER_BATCH
    run.refresh_from_db()
    assert run.items_deleted == len(files)
    assert run.details["targets"]["files"] == {"items": len(files), "bytes": 10 * len(files)}


def test_a_small_batch_reports_after_every_file(allowed, run, monkeypatch):
    monkeypatch.setattr(cleanup_tasks.files, "FILES_PER_BATCH", 1)
    files = [_old_file(allowed / f"{n}.log") for n in range(3)]

    ctx = ComparesRecordWithDisk(_params(allowed), run=run, files=files)
    get_task("delete_old_files").function(ctx)

    assert ctx.reports == [1, 1, 1]
    assert ctx.behind == [0, 0, 0]


def test_out_of_time_records_the_part_and_the_next_part_resumes(allowed, run):
    for n in range(5):
        _old_file(allowed / "sub" / f"{n}.log")
    params = _params(allowed, recursive=True, remove_empty_dirs=True)

    first = CleanupContext(params, run=run, deadline=time.monotonic())  # out of time at once
    assert get_task("delete_old_files").function(first) == "Paused after 1 file(s); continuing."
    run.refresh_from_db()
    assert run.items_deleted == 1

    second = CleanupContext(params, run=run)
    assert get_task("delete_old_files").function(second) == "Freed 40 byte(s) in 4 file(s)."
    run.refresh_from_db()
    assert run.details["targets"] == {
        "files": {"items": 5, "bytes": 50},
        "directories": {"items": 1, "bytes": 0},
    }
    assert list(allowed.iterdir()) == []
