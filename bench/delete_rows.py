"""Benchmark: the delete_old_rows task against one raw DELETE and QuerySet.delete(), on SQLite.

    .venv/bin/python bench/delete_rows.py [--rows 1000000] [--parents 200000] [--batch-size 1000]
                                          [--repeat 3] [--sweep [--sweep-sizes 1000,5000,20000]]
                                          [--variants] [--archive]

(from the project root; it uses bench.settings, whatever DJANGO_SETTINGS_MODULE or DATABASE_URL
say, and leaves nothing behind).

Data. Every run migrates a fresh database in a new temporary directory and fills two template
databases once: ``--rows`` old PlainRow rows (created 60 to 31 days ago, spread evenly) plus 10%
recent ones (about 1 day old), and ``--parents`` old Parent rows with two Child rows each plus 10%
recent parents (with their children). Rows go in oldest first, in chunks of 10% (executemany, one
transaction per chunk), as a table that has grown over time would hold them. Each method then
works on a byte-for-byte copy of its template, so every method starts from the identical table,
opened through Django with the project's SQLite options (WAL, synchronous=NORMAL, IMMEDIATE).

Methods, each deleting every row older than 30 days:

* raw DELETE: one ``DELETE FROM ... WHERE created_at < ?`` in one transaction (for the cascading
  pair: the children of the old parents first, then the parents, in one transaction);
* QuerySet.delete(): Django's default on the filtered queryset (the database's fast path for the
  plain table, the collector with its cascade for the parents);
* delete_old_rows: the project's task, its params validated by ``clean_params`` and run with
  ``CleanupContext(params, dry_run=False, run=None, deadline=None)``; twice: without batch_size
  (the task's default, batches that size themselves to about 50 ms) and with ``--batch-size``
  (1000 unless given).

Each method runs ``--repeat`` times (default 3), round-robin with the others, each time on a
fresh copy; the report gives the median run's time, the longest transaction of any run, and the
ratio of the medians (single runs of a 1M-row delete vary by up to 30% on a small VM). After each
run the database is checked, and the script stops with "CHECK FAILED" if it is wrong: no old row
is left, exactly the recent rows are, and for the cascading pair no child outlived its parent and
every recent parent still has its two children.

Longest transaction. A connection.execute_wrapper sees Django's ``BEGIN IMMEDIATE`` and starts the
clock when it returns (the write lock is taken); Django's ``_commit``/``_rollback`` on this
connection are wrapped to stop it when they return (the lock is released). So it is the time
another writer (the web process, another worker) could be kept waiting, including the commit's
write to the WAL and the automatic checkpoint SQLite runs when a commit takes the WAL past 1000
pages. A write statement outside any transaction would count as a transaction of its own. For the
raw DELETE it is the whole delete; for QuerySet.delete() it is the collector's atomic block (for
the cascade, the SELECT of the parents before it is a read that blocks no writer); for
delete_old_rows it is the longest of its batches. (Timing only the gaps between the ends of
consecutive batches, through CleanupContext.deleted, would also count the time between batches,
when no lock is held; this measures the lock itself.)

Targets (for delete_old_rows): at least 0.7x the raw DELETE's rows/s, and no transaction longer
than 250 ms. ``--sweep`` also runs the task at several fixed batch sizes and estimates from those
runs which batch sizes would meet both; ``--variants`` measures other ways of doing
``cleanups.registry.delete_in_batches`` (bench/variants.py), swapped in for the task in this
process only (the project's files are not touched).

Archive before delete. ``--archive`` also runs delete_old_rows (default batches, and
``--batch-size``) with the archive on: ``ctx.archive`` is a ``cleanups.tasks.archive.Archiver``
over a ``FileSystemStorage`` in a new directory of the workspace for each run, so every batch's
rows (and the rows that cascade from them) are written as a closed gzip JSON Lines part before
the batch's DELETE commits. The clock above times its batches the same way, so the archive
write is inside each batch's transaction. The parts are those the deleter records through
``ctx.archived`` (wrapped in the bench's context only); the time each part's ``write_lines``
takes is measured by a subclass of the Archiver that only times it. After each run (outside the
timing) the archive is checked, or the script stops with "CHECK FAILED": each recorded part is
in the storage with the recorded size and SHA-256, its lines are the recorded row count, and all
lines together are each deleted row exactly once, per model. The report gives, for each table,
rows/s with the archive on, off and for the raw DELETE, the ratios archive-on / raw DELETE and
archive-on / archive-off, the longest transaction with the archive on, and the archive's bytes
per row (compressed part bytes / rows archived). Targets (the archive on): at least 0.5x the raw
DELETE's rows/s, no transaction longer than 250 ms.

Stdout is only the Markdown report; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
os.environ.pop("BENCH_DATABASE_URL", None)  # this bench measures SQLite only

import django

django.setup()

from django.core.files.storage import FileSystemStorage
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from bench import variants
from bench.benchapp.models import Child, Parent, PlainRow
from cleanups import cleanup_tasks
from cleanups.registry import CleanupContext, get_task
from cleanups.tasks.archive import Archiver

TARGET_RATIO = 0.7
TARGET_TRANSACTION_MS = 250.0
ARCHIVE_TARGET_RATIO = 0.5  # the archive on: of the raw DELETE's rows/s
CHILDREN_PER_PARENT = 2

db = connections[DEFAULT_DB_ALIAS]
Result = dict[str, float]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    """Stop the benchmark: a method deleted the wrong rows, so its timing means nothing."""
    raise SystemExit(f"bench/delete_rows.py: CHECK FAILED: {message}")


# The clock ------------------------------------------------------------------------------------


class TransactionClock:
    """How long each transaction on ``db`` holds SQLite's write lock (see the module docstring)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._began: float | None = None

    @property
    def longest(self) -> float:
        return max(self.durations, default=0.0)

    def _execute(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        raw = db.connection
        in_transaction = raw.in_transaction
        started = time.perf_counter()
        result = execute(sql, params, many, context)
        now = time.perf_counter()
        if sql.lstrip()[:5].upper() == "BEGIN":
            self._began = now
        elif (
            not in_transaction
            and not raw.in_transaction
            and not sql.lstrip().upper().startswith(("SELECT", "PRAGMA"))
        ):
            self.durations.append(now - started)  # an autocommit write: its own transaction
        return result

    def _ended(self, finish: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            try:
                finish()
            finally:
                if self._began is not None:
                    self.durations.append(time.perf_counter() - self._began)
                    self._began = None

        return timed

    @contextmanager
    def running(self) -> Iterator[TransactionClock]:
        db.ensure_connection()
        db._commit = self._ended(db._commit)
        db._rollback = self._ended(db._rollback)
        try:
            with db.execute_wrapper(self._execute):
                yield self
        finally:
            del db._commit, db._rollback  # the class's own methods again


# Data -----------------------------------------------------------------------------------------


class Workspace:
    """A temporary directory: an empty migrated database, filled templates, the working copy."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cleanups-bench-"))
        self.work = self.dir / "work.sqlite3"

    def open(self, path: Path) -> None:
        db.close()
        db.settings_dict["NAME"] = str(path)
        db.ensure_connection()

    def close(self) -> None:
        """Close the connection with the WAL folded into the file, so the file alone is the data."""
        if db.connection is not None:
            db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()

    def migrate(self) -> Path:
        empty = self.dir / "empty.sqlite3"
        self.open(empty)
        call_command("migrate", verbosity=0)
        self.close()
        return empty

    def template(self, name: str, fill: Callable[[], None], empty: Path) -> Path:
        path = self.dir / f"{name}.sqlite3"
        shutil.copyfile(empty, path)
        self.open(path)
        fill()
        self.close()
        return path

    def fresh_copy(self, template: Path) -> None:
        """Point the connection at a new copy of ``template``: the identical table, again."""
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.work}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(template, self.work)
        self.open(self.work)

    def remove(self) -> None:
        db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def timestamps(count: int, oldest_days: float, newest_days: float, now: datetime) -> Iterator[str]:
    """``count`` datetimes spread evenly from oldest to newest, as Django stores them in SQLite."""
    oldest = now - timedelta(days=oldest_days)
    step = (oldest_days - newest_days) * 86400 / max(count - 1, 1)
    for i in range(count):
        yield db.ops.adapt_datetimefield_value(oldest + timedelta(seconds=i * step))


def insert(table: str, columns: list[str], rows: Iterator[tuple], total: int) -> None:
    """executemany in chunks of 10%, each its own transaction, a line on stderr per chunk."""
    raw = db.connection
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    chunk = max(-(-total // 10), 1)
    done = 0
    while done < total:
        batch = [row for _, row in zip(range(chunk), rows, strict=False)]
        raw.execute("BEGIN")
        raw.executemany(sql, batch)
        raw.execute("COMMIT")
        done += len(batch)
        say(f"    filled {done:>9,} / {total:,} {table} rows ({done / total:.0%})")


def dates(old: int, now: datetime) -> Iterator[str]:
    """``old`` timestamps 60 to 31 days old, then old // 10 recent ones (1 to 1.04 days old)."""
    yield from timestamps(old, 60, 31, now)
    yield from timestamps(old // 10, 1 + 1 / 24, 1, now)


def fill_plain(old: int, now: datetime) -> None:
    total = old + old // 10
    rows = ((when, "x" * 40) for when in dates(old, now))
    insert(PlainRow._meta.db_table, ["created_at", "payload"], rows, total)


def fill_parents(old: int, now: datetime) -> None:
    total = old + old // 10
    rows = ((pk, when) for pk, when in enumerate(dates(old, now), start=1))
    insert(Parent._meta.db_table, ["id", "created_at"], rows, total)
    children = (
        (pk, f"child {n} of {pk}") for pk in range(1, total + 1) for n in range(CHILDREN_PER_PARENT)
    )
    insert(Child._meta.db_table, ["parent_id", "payload"], children, total * CHILDREN_PER_PARENT)


# Checks ---------------------------------------------------------------------------------------


def check_plain(old: int, cutoff: datetime) -> None:
    left_old = PlainRow.objects.filter(created_at__lt=cutoff).count()
    left = PlainRow.objects.count()
    if left_old:
        fail(f"{left_old:,} old PlainRow rows are left")
    if left != old // 10:
        fail(f"{left:,} PlainRow rows are left, expected the {old // 10:,} recent ones")


def check_parents(old: int, cutoff: datetime) -> None:
    recent = old // 10
    left_old = Parent.objects.filter(created_at__lt=cutoff).count()
    parents = Parent.objects.count()
    orphans = Child.objects.exclude(parent_id__in=Parent.objects.values("pk")).count()
    children = Child.objects.count()
    if left_old:
        fail(f"{left_old:,} old parents are left")
    if parents != recent:
        fail(f"{parents:,} parents are left, expected the {recent:,} recent ones")
    if orphans:
        fail(f"{orphans:,} children outlived their parents")
    if children != CHILDREN_PER_PARENT * parents:
        fail(f"{children:,} children are left, expected {CHILDREN_PER_PARENT * parents:,}")


# The archive ----------------------------------------------------------------------------------


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


# Methods --------------------------------------------------------------------------------------

Method = Callable[[], int]  # deletes, returns the number of rows it deleted


def raw_delete(statements: list[str], cutoff: datetime) -> Method:
    def run() -> int:
        when = db.ops.adapt_datetimefield_value(cutoff)
        with transaction.atomic(), db.cursor() as cursor:  # one BEGIN IMMEDIATE ... COMMIT
            deleted = 0
            for sql in statements:
                cursor.execute(sql, [when])
                deleted += cursor.rowcount
        return deleted

    return run


def queryset_delete(model: type, cutoff: datetime) -> Method:
    def run() -> int:
        deleted, _ = model.objects.filter(created_at__lt=cutoff).delete()
        return deleted

    return run


def task_name(batch_size: int | None, prefix: str = "delete_old_rows") -> str:
    return f"{prefix} ({'default batches' if batch_size is None else f'batch_size {batch_size}'})"


def task_delete(
    model_label: str,
    batch_size: int | None,
    replacement: Callable | None = None,
    archive: ArchiveProbe | None = None,
) -> Method:
    """The delete_old_rows task; with ``replacement``, that instead of delete_in_batches; with
    ``archive``, the archive on (the probe's)."""

    def run() -> int:
        task = get_task("delete_old_rows")
        if task is None:
            fail("the delete_old_rows task is not registered")
        given = {"model": model_label, "field": "created_at", "older_than_days": 30}
        if batch_size is not None:
            given["batch_size"] = batch_size
        params = task.clean_params(given)
        ctx = CleanupContext(params, dry_run=False, run=None, deadline=None)
        if archive is not None:
            archive.attach(ctx)
        if replacement is None:
            task.function(ctx)
        else:
            with mock.patch.object(cleanup_tasks.rows, "delete_in_batches", replacement):
                task.function(ctx)
        return ctx.items

    return run


def measure(name: str, method: Method) -> Result:
    clock = TransactionClock()
    with clock.running():
        started = time.perf_counter()
        deleted = method()
        seconds = time.perf_counter() - started
    say(
        f"    {name}: {deleted:,} rows in {seconds:.2f} s, {len(clock.durations):,} "
        f"transaction(s), longest {clock.longest * 1000:.1f} ms"
    )
    return {
        "rows": deleted,
        "seconds": seconds,
        "longest": clock.longest,
        "transactions": len(clock.durations),
    }


class Case:
    """One table (plain, or the cascading pair): its template, its check, its results."""

    def __init__(
        self,
        title: str,
        tag: str,
        workspace: Workspace,
        template: Path,
        check: Callable[[], None],
    ) -> None:
        self.title, self.tag = title, tag
        self.workspace, self.template, self.check = workspace, template, check
        self.methods: dict[str, Method] = {}
        self.after: dict[str, Callable[[Result], Result]] = {}
        self.samples: dict[str, list[Result]] = {}
        self.results: dict[str, Result] = {}

    def add(
        self, name: str, method: Method, after: Callable[[Result], Result] | None = None
    ) -> None:
        """``after``: called once a run is checked (untimed), its figures added to the run's."""
        self.methods.setdefault(name, method)
        if after is not None:
            self.after.setdefault(name, after)

    def run_all(self, repeat: int) -> None:
        """Every method ``repeat`` times, round-robin, each time on a fresh copy, then checked.

        A method's result: the median run's seconds, the longest transaction of all its runs.
        """
        for round_ in range(1, repeat + 1):
            for name, method in self.methods.items():
                say(f"{self.tag}: {name} (run {round_} of {repeat})")
                self.workspace.fresh_copy(self.template)
                result = measure(name, method)
                self.check()
                if name in self.after:
                    result.update(self.after[name](result))
                self.samples.setdefault(name, []).append(result)
        for name, runs in self.samples.items():
            median = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
            longest = {
                key: max(r[key] for r in runs)
                for key in ("longest", "longest_write")
                if key in median
            }
            self.results[name] = {**median, **longest}

    @property
    def raw_rate(self) -> float:
        raw = self.results["raw DELETE"]
        return raw["rows"] / raw["seconds"]


# Report ---------------------------------------------------------------------------------------


def rate(result: Result) -> float:
    return result["rows"] / result["seconds"]


def table(case: Case, names: list[str]) -> list[str]:
    lines = [
        f"**{case.title}**",
        "",
        "| method | rows deleted | seconds | rows/s | vs raw DELETE | transactions "
        "| longest transaction (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        r = case.results[name]
        lines.append(
            f"| {name} | {int(r['rows']):,} | {r['seconds']:.2f} | {rate(r):,.0f} | "
            f"{rate(r) / case.raw_rate:.2f}x | {int(r['transactions']):,} | "
            f"{r['longest'] * 1000:,.1f} |"
        )
    return lines


def meets(case: Case, name: str) -> tuple[bool, bool]:
    r = case.results[name]
    return rate(r) / case.raw_rate >= TARGET_RATIO, r["longest"] * 1000 <= TARGET_TRANSACTION_MS


def verdict(case: Case, name: str) -> str:
    r = case.results[name]
    fast, short = meets(case, name)
    return (
        f"- [{case.tag}] {name}: throughput {rate(r) / case.raw_rate:.2f}x raw DELETE "
        f"(target >= {TARGET_RATIO}x): {'MET' if fast else 'NOT MET'}; longest transaction "
        f"{r['longest'] * 1000:,.1f} ms (target <= {TARGET_TRANSACTION_MS:.0f} ms): "
        f"{'MET' if short else 'NOT MET'}"
    )


def batch_size_needed(case: Case, sizes: list[int], names: list[str]) -> list[str]:
    """Which batch sizes would meet both targets: measured, and estimated from a fitted model.

    Model: a batch of B rows costs a + c*B seconds (a: per-transaction overhead, c: per row), so
    the run's seconds per row are c + a/B (least squares over the sweep) and a typical
    transaction lasts a + c*B. Throughput target: c + a/B <= raw seconds per row / 0.7.
    Transaction target: a + c*B <= 250 ms (the longest measured also has checkpoint spikes).
    """
    met = [size for size, name in zip(sizes, names, strict=True) if all(meets(case, name))]
    lines = [
        f"- [{case.tag}] swept batch sizes meeting both targets: "
        + (", ".join(f"{size:,}" for size in met) if met else "none")
    ]
    if len(sizes) < 2:
        return lines
    xs = [1 / size for size in sizes]
    ys = [case.results[name]["seconds"] / case.results[name]["rows"] for name in names]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    a = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    c = mean_y - a * mean_x
    budget = 1 / case.raw_rate / TARGET_RATIO
    longest = TARGET_TRANSACTION_MS / 1000
    fit = (
        f"fit: {a * 1000:.2f} ms per transaction + {c * 1e6:.2f} us per row "
        f"(raw DELETE: {1e6 / case.raw_rate:.2f} us per row)"
    )
    if c <= 0 or a <= 0:
        lines.append(f"- [{case.tag}] {fit}: no usable estimate from this sweep")
    elif c >= budget:
        lines.append(
            f"- [{case.tag}] {fit}: NO batch size can reach {TARGET_RATIO}x raw DELETE, the "
            f"per-row cost alone is {c / (1 / case.raw_rate):.1f}x raw's; at best "
            f"{(1 / case.raw_rate) / c:.2f}x"
        )
    else:
        smallest = a / (budget - c)
        largest = (longest - a) / c
        answer = (
            f"batch_size from about {smallest:,.0f} to {largest:,.0f} should meet both"
            if smallest <= largest
            else f"no batch size meets both (needs >= {smallest:,.0f} rows, "
            f"<= {largest:,.0f} for {TARGET_TRANSACTION_MS:.0f} ms)"
        )
        lines.append(f"- [{case.tag}] {fit}: {answer}")
    return lines


def archive_table(case: Case, pairs: list[tuple[str, str]]) -> list[str]:
    """Each (archive off, archive on) pair, after the raw DELETE, with the archive's figures."""
    lines = [
        f"**{case.title}**",
        "",
        "| method | rows deleted | seconds | rows/s | vs raw DELETE | vs archive off "
        "| transactions | longest transaction (ms) | parts | archive bytes/row "
        "| in part writes | longest part write (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [("raw DELETE", None)]
    for off, on in pairs:
        rows += [(off, None), (on, off)]
    for name, off in rows:
        r = case.results[name]
        versus = f"{rate(r) / rate(case.results[off]):.2f}x" if off else ""
        archive = (
            f"{int(r['parts']):,} | {r['archive_bytes'] / max(r['archive_rows'], 1):.1f} | "
            f"{r['write_seconds'] / r['seconds']:.0%} | {r['longest_write'] * 1000:,.1f}"
            if "parts" in r
            else " |  |  | "
        )
        lines.append(
            f"| {name} | {int(r['rows']):,} | {r['seconds']:.2f} | {rate(r):,.0f} | "
            f"{rate(r) / case.raw_rate:.2f}x | {versus} | {int(r['transactions']):,} | "
            f"{r['longest'] * 1000:,.1f} | {archive} |"
        )
    return lines


def archive_verdict(case: Case, off: str, on: str) -> str:
    r = case.results[on]
    ratio = rate(r) / case.raw_rate
    fast, short = ratio >= ARCHIVE_TARGET_RATIO, r["longest"] * 1000 <= TARGET_TRANSACTION_MS
    return (
        f"- [{case.tag}] {on}: {rate(r):,.0f} rows/s (archive off {rate(case.results[off]):,.0f}, "
        f"raw DELETE {case.raw_rate:,.0f}); throughput {ratio:.2f}x raw DELETE (target >= "
        f"{ARCHIVE_TARGET_RATIO}x): {'MET' if fast else 'NOT MET'}; "
        f"{rate(r) / rate(case.results[off]):.2f}x archive off; longest transaction "
        f"{r['longest'] * 1000:,.1f} ms (target <= {TARGET_TRANSACTION_MS:.0f} ms): "
        f"{'MET' if short else 'NOT MET'}; archive "
        f"{r['archive_bytes'] / max(r['archive_rows'], 1):.1f} bytes/row"
    )


# Main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="old PlainRow rows (plus 10%% recent)"
    )
    parser.add_argument(
        "--parents", type=int, default=200_000, help="old parents, 2 children each (plus 10%%)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        help="the fixed batch_size delete_old_rows also runs with (the default run has none)",
    )
    parser.add_argument(
        "--sweep", action="store_true", help="also run delete_old_rows at --sweep-sizes"
    )
    parser.add_argument(
        "--sweep-sizes",
        default="1000,5000,20000",
        help="comma-separated batch sizes for --sweep (default: %(default)s)",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also measure the candidate delete_in_batches replacements in bench/variants.py",
    )
    parser.add_argument(
        "--archive",
        action="store_true",
        help="also run delete_old_rows with the archive on (an Archiver over a temporary "
        "FileSystemStorage), against the archive off and the raw DELETE",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per method, round-robin; the median counts (default: %(default)s)",
    )
    args = parser.parse_args()
    sizes = sorted({int(size) for size in args.sweep_sizes.split(",") if size.strip()})
    if args.rows < 10 or args.parents < 10:
        parser.error("--rows and --parents must be at least 10")
    if args.repeat < 1 or args.batch_size < 1 or not sizes or min(sizes) < 1:
        parser.error("--repeat, --batch-size and --sweep-sizes must be at least 1")

    started = time.perf_counter()
    workspace = Workspace()
    try:
        report = run(args, sizes, workspace)
    finally:
        workspace.remove()
    say(f"done in {time.perf_counter() - started:.0f} s")
    print("\n".join(report))


def run(args: argparse.Namespace, sizes: list[int], workspace: Workspace) -> list[str]:
    now = timezone.now()
    cutoff = now - timedelta(days=30)
    say(f"databases in {workspace.dir}")
    empty = workspace.migrate()
    say(f"plain table template: {args.rows:,} old + {args.rows // 10:,} recent rows")
    plain_template = workspace.template("plain", lambda: fill_plain(args.rows, now), empty)
    say(f"cascade template: {args.parents:,} old + {args.parents // 10:,} recent parents")
    cascade_template = workspace.template("cascade", lambda: fill_parents(args.parents, now), empty)

    def check_plain_now() -> None:
        check_plain(args.rows, cutoff)

    def check_parents_now() -> None:
        check_parents(args.parents, cutoff)

    plain = Case(
        f"Plain table: {args.rows:,} old rows + {args.rows // 10:,} recent (SQLite, WAL, "
        "IMMEDIATE)",
        "plain",
        workspace,
        plain_template,
        check_plain_now,
    )
    cascade = Case(
        f"Cascade: {args.parents:,} old parents x {CHILDREN_PER_PARENT} children + "
        f"{args.parents // 10:,} recent parents (rows = parents + children)",
        "cascade",
        workspace,
        cascade_template,
        check_parents_now,
    )
    table_name = PlainRow._meta.db_table
    parents, children = Parent._meta.db_table, Child._meta.db_table
    raw_sql = {
        "plain": [f"DELETE FROM {table_name} WHERE created_at < %s"],
        "cascade": [
            f"DELETE FROM {children} WHERE parent_id IN "
            f"(SELECT id FROM {parents} WHERE created_at < %s)",
            f"DELETE FROM {parents} WHERE created_at < %s",
        ],
    }
    models = {"plain": PlainRow, "cascade": Parent}
    default, fixed = task_name(None), task_name(args.batch_size)
    main_names = ["raw DELETE", "QuerySet.delete()", default, fixed]
    swept = [task_name(size) for size in sizes]
    candidates = {
        task_name(size, name): (function, size)
        for name, function in variants.VARIANTS.items()
        for size in (None, args.batch_size)
    }
    archived = {
        off: task_name(size, "delete_old_rows + archive")
        for off, size in ((default, None), (fixed, args.batch_size))
    }
    for case in (plain, cascade):
        model = models[case.tag]
        label = model._meta.label
        case.add("raw DELETE", raw_delete(raw_sql[case.tag], cutoff))
        case.add("QuerySet.delete()", queryset_delete(model, cutoff))
        case.add(default, task_delete(label, None))
        case.add(fixed, task_delete(label, args.batch_size))
        if args.sweep:
            for size, name in zip(sizes, swept, strict=True):
                case.add(name, task_delete(label, size))
        if args.variants:
            for name, (function, size) in candidates.items():
                case.add(name, task_delete(label, size, function))
        if args.archive:
            probe = ArchiveProbe(workspace.dir, case.tag)
            for size, name in ((None, archived[default]), (args.batch_size, archived[fixed])):
                case.add(name, task_delete(label, size, archive=probe), probe.verify)
        case.run_all(args.repeat)

    report: list[str] = [
        f"Each method: median of {args.repeat} run(s), each on a fresh copy of the same table; "
        "longest transaction: the longest in any of its runs.",
        "",
    ]
    for case in (plain, cascade):
        report += [*table(case, main_names), ""]
    report += [
        f"**Targets** (delete_old_rows: >= {TARGET_RATIO}x raw DELETE rows/s, no transaction "
        f"> {TARGET_TRANSACTION_MS:.0f} ms)",
        "",
    ]
    report += [verdict(case, name) for case in (plain, cascade) for name in (default, fixed)]
    if args.sweep:
        report += ["", "**Batch-size sweep** (delete_old_rows, fixed batch_size)", ""]
        for case in (plain, cascade):
            report += [*table(case, ["raw DELETE", *swept]), ""]
            report += [verdict(case, name) for name in swept]
            report += [*batch_size_needed(case, sizes, swept), ""]
    if args.variants:
        report += [
            "",
            "**Candidate delete_in_batches replacements** (bench/variants.py, swapped in for "
            "the task in this process only)",
            "",
        ]
        for case in (plain, cascade):
            report += [*table(case, ["raw DELETE", default, fixed, *candidates]), ""]
            report += [verdict(case, name) for name in candidates]
            report.append("")
    if args.archive:
        report += [
            "",
            "**Archive before delete** (delete_old_rows with ctx.archive = an Archiver over a "
            "FileSystemStorage in a temporary directory: each batch's rows, and what cascades "
            "from them, written as a closed gzip JSON Lines part inside the batch's transaction; "
            "bytes/row: compressed part bytes / rows archived; in part writes: the share of the "
            "run's time spent in Archiver.write_lines: gzip and save)",
            "",
        ]
        for case in (plain, cascade):
            report += [*archive_table(case, list(archived.items())), ""]
        report += [
            f"**Archive targets** (archive on: >= {ARCHIVE_TARGET_RATIO}x raw DELETE rows/s, "
            f"no transaction > {TARGET_TRANSACTION_MS:.0f} ms)",
            "",
        ]
        report += [
            archive_verdict(case, off, on)
            for case in (plain, cascade)
            for off, on in archived.items()
        ]
    return report


if __name__ == "__main__":
    main()
