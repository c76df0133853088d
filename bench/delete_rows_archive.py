"""The archive side of bench/delete_rows.py ``--archive``: an Archiver that times its part
writes, and a probe that turns the archive on for one run and checks afterwards what it wrote
(bench/delete_rows.py's docstring says what is checked and why)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from django.core.files.storage import FileSystemStorage

from bench.delete_rows_data import fail, say
from cleanups.registry import CleanupContext
from cleanups.tasks.archive import Archiver

Result = dict[str, float]


class TimedArchiver(Archiver):
    """The project's Archiver, unchanged, with the time each part's write_lines (gzip and the
    storage's save; rows are serialized before it, in the batch) takes noted."""

    def __init__(self, prefix: str, storage: FileSystemStorage) -> None:
        super().__init__(prefix, storage)
        self.writes: list[float] = []

    def write_lines(self, texts: Any, rows: int, label: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return super().write_lines(texts, rows, label)
        finally:
            self.writes.append(time.perf_counter() - started)


class ArchiveProbe:
    """Turns the archive on for one context at a time, in a new storage directory, and checks
    afterwards what it wrote (see the module docstring)."""

    def __init__(self, root: Path, tag: str) -> None:
        self.root, self.tag = root, tag
        self.runs = 0
        self.location: Path | None = None
        self.archiver: TimedArchiver | None = None
        self.ctx: CleanupContext | None = None
        self.parts: list[dict[str, Any]] = []

    def attach(self, ctx: CleanupContext) -> None:
        self.runs += 1
        self.location = self.root / f"archive-{self.tag}-{self.runs}"
        self.archiver = TimedArchiver(
            f"bench/{self.tag}-{self.runs}", FileSystemStorage(location=self.location)
        )
        self.ctx, self.parts = ctx, []
        ctx.archive = self.archiver
        recorded = ctx.archived

        def archived(part: dict[str, Any]) -> None:
            self.parts.append(part)
            recorded(part)

        ctx.archived = archived  # type: ignore[method-assign]  # this context only

    def verify(self, result: Result) -> Result:
        """Check the run's archive against what it deleted; its figures; then remove it."""
        if self.archiver is None or self.ctx is None or self.location is None:
            fail("an archive run left no archiver")
        storage = self.archiver.storage
        expected = {label.lower(): c.get("items", 0) for label, c in self.ctx.targets.items()}
        keys: dict[str, set[Any]] = {}
        lines = 0
        for part in self.parts:
            name = part["name"]
            if not storage.exists(name):
                fail(f"archive part {name} was recorded but is not in the storage")
            with storage.open(name, "rb") as stored:
                data = stored.read()
            if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
                fail(f"archive part {name} is not the size or SHA-256 recorded for it")
            rows = gzip.decompress(data).decode().splitlines()
            if len(rows) != part["rows"]:
                fail(f"archive part {name} has {len(rows):,} rows, {part['rows']:,} recorded")
            for line in rows:
                row = json.loads(line)
                seen = keys.setdefault(row["model"], set())
                if row["pk"] in seen:
                    fail(f"{row['model']} {row['pk']} is archived twice")
                seen.add(row["pk"])
            lines += len(rows)
        archived = {model: len(pks) for model, pks in keys.items()}
        if archived != {model: n for model, n in expected.items() if n}:
            fail(f"archived {archived}, but deleted {expected}")
        if lines != result["rows"]:
            fail(f"archived {lines:,} rows, but deleted {int(result['rows']):,}")
        size = sum(part["bytes"] for part in self.parts)
        writes = self.archiver.writes
        say(
            f"    archive checked: {len(self.parts):,} part(s), {lines:,} rows, {size:,} bytes "
            f"({size / max(lines, 1):.1f} per row), longest part write "
            f"{max(writes, default=0.0) * 1000:.1f} ms"
        )
        shutil.rmtree(self.location, ignore_errors=True)
        self.archiver = self.ctx = self.location = None
        return {
            "parts": len(self.parts),
            "archive_rows": lines,
            "archive_bytes": size,
            "write_seconds": sum(writes),
            "longest_write": max(writes, default=0.0),
        }
