"""Benchmark: the delete_old_rows task against one raw DELETE and QuerySet.delete(), on SQLite or
PostgreSQL, with another writer on the same table.

    .venv/bin/python bench/delete_rows.py [--database sqlite|postgres] [--rows 1000000]
                                          [--parents 200000] [--batch-size 1000] [--repeat 3]
                                          [--sweep [--sweep-sizes 1000,5000,20000]]
                                          [--variants] [--archive]

(from the project root; it uses bench.settings, whatever DJANGO_SETTINGS_MODULE, DATABASE_URL or
BENCH_DATABASE_URL say, and leaves nothing behind).

Databases. ``--database sqlite`` (the default): files in a new temporary directory, opened
through Django with the project's SQLite options (WAL, synchronous=NORMAL, IMMEDIATE, the busy
timeout). ``--database postgres``: a throwaway server of the bench's own (bench/pgserver.py, as
the suite's bin/_postgres.sh: the newest installed PostgreSQL, initdb into a temporary directory,
``-A trust``, a free loopback port; as root, run as the postgres user), stopped at the end, also
on an error, Ctrl-C or SIGTERM. Durability is off on it, as in the suite (fsync,
synchronous_commit and full_page_writes off): no commit waits for a disk flush, so its figures
are those of a server whose disk costs nothing, not of a durable one. Autovacuum runs as on any
server. The bench reaches it through the project's own PostgreSQL settings, with
``DATABASE_POOL=false``: the bench moves its one connection from database to database, and a
pool would keep a template open (a database cannot be copied while connected to).

Data. Every run migrates an empty database and fills two templates once: ``--rows`` old
PlainRow rows (created 60 to 31 days ago, spread evenly) plus 10% recent ones (about 1 day old),
and ``--parents`` old Parent rows with two Child rows each plus 10% recent parents (with their
children). Rows go in oldest first, in chunks of 10% (one transaction per chunk), as a table that
has grown over time would hold them: on SQLite by executemany, on PostgreSQL made by the server
(``INSERT ... SELECT ... generate_series``), then ``VACUUM ANALYZE``, so that every copy starts
with the visibility map and planner statistics autovacuum would have left. Each method then works
on a fresh copy of its template, so every method starts from the identical table: on SQLite a
byte-for-byte copy of the file, on PostgreSQL ``CREATE DATABASE ... TEMPLATE`` (a file copy,
statistics included).

Methods, each deleting every row older than 30 days:

* raw DELETE: one ``DELETE FROM ... WHERE created_at < %s`` in one transaction (for the cascading
  pair: the children of the old parents first, then the parents, in one transaction);
* QuerySet.delete(): Django's default on the filtered queryset (the database's fast path for the
  plain table, the collector with its cascade for the parents);
* delete_old_rows: the project's task, its params validated by ``clean_params`` and run with
  ``CleanupContext(params, dry_run=False, run=None, deadline=None)``; twice: without batch_size
  (the task's default, batches that size themselves to about 50 ms) and with ``--batch-size``
  (1000 unless given). When ``cleanups.tasks.deleter.delete_in_batches`` takes a ``keyset``
  parameter (seen with ``inspect.signature``, so the bench runs on either deleter), the task as
  it is deletes by primary-key range where the table allows it, and two more methods,
  ``delete_old_rows (IN batches, ...)``, run the same task with ``delete_in_batches`` called
  with ``keyset=False`` (the ``pk IN (SELECT pk ... LIMIT n)`` batches), swapped in for the task
  in this process only. Without the parameter the report says so, and the task runs as it is.

Each method runs ``--repeat`` times (default 3), round-robin with the others, each time on a
fresh copy; the report gives the median run's time, the longest transaction of any run, the
ratio of the medians (single runs of a 1M-row delete vary by up to 30% on a small VM), and the
neighbour's latencies over all runs. After each run the database is checked, and the script
stops with "CHECK FAILED" if it is wrong: no old row is left, exactly the recent rows are (those
of the template and those the neighbour inserted), and for the cascading pair no child outlived
its parent and every recent parent still has its two children.

The neighbour. While each method runs, another writer works on the same table, standing for the
web process or another worker (bench/neighbour.py): a thread with its own Django connection (on
SQLite to the same file, with the project's options: WAL, the busy timeout, IMMEDIATE; on
PostgreSQL its own psycopg connection), alternating an insert of a row created now and an update
of a random recent row (picked by key among the template's recent rows, and required to be newer
than the cutoff still), 50 operations a second, each in its own transaction (``atomic()``). On
the cascading pair, an inserted parent comes with its two children in the same transaction and
an update moves a recent parent's created_at to one day ago. It never touches an old row, so
every method's check still holds. An operation is timed from its start to its commit returning,
so it includes any wait for a lock the method holds (on SQLite: the busy handler's retries, whose
sleeps grow to 100 ms); one that overruns its 20 ms slot is followed at once by the next, with no
burst to catch up. The neighbour is connected and has read the recent keys before the method's
clock starts, does at least one operation, and stops when the method returns. The report gives
its p50, p99 and max over every operation of all of a method's runs (the raw DELETE's too, for
comparison). The thread shares the bench's GIL (both drivers release it while a statement runs
or waits), so a method's Python code can add up to the interpreter's switch interval (5 ms) to
an operation; a writer in another process would not pay that.

Longest transaction. TransactionClock wraps the bench's own connection (not the neighbour's):
Django's ``_commit`` and ``_rollback`` on it are wrapped to stop the clock when they return (the
locks are released); the start is seen by a ``connection.execute_wrapper``. On SQLite, Django's
``atomic()`` sends ``BEGIN IMMEDIATE`` itself, and the clock starts when it returns (the write
lock is taken). On PostgreSQL ``atomic()`` only turns psycopg's autocommit off
(``set_autocommit(False)``) and psycopg sends BEGIN ahead of the next statement, so the clock
starts when the first statement run while Django's autocommit is off begins. So it is the time
another writer could be kept waiting: on SQLite any writer, including the commit's write to the
WAL and the automatic checkpoint SQLite runs when a commit takes the WAL past 1000 pages; on
PostgreSQL a writer of the same rows (inserts and updates of others do not wait, as the
neighbour shows). A write statement outside any transaction counts as a transaction of its own
(not a read: SELECT, SHOW, a PRAGMA other than ``PRAGMA optimize``, which may run ANALYZE under
the write lock; on PostgreSQL nor VACUUM or ANALYZE, which block no insert or update: the task's
maintenance after a big delete runs them outside its batches). For the raw DELETE it is the whole delete; for QuerySet.delete() it is the collector's
atomic block (for the cascade, the SELECT of the parents before it is a read that blocks no
writer); for delete_old_rows it is the longest of its batches. (Timing only the gaps between the
ends of consecutive batches, through CleanupContext.deleted, would also count the time between
batches, when no lock is held; this measures the lock itself.)

Targets (for each delete_old_rows method): at least 0.9x the raw DELETE's rows/s on SQLite,
0.8x on PostgreSQL; no transaction longer than 100 ms; the neighbour's p99 under 50 ms. Each
verdict line gives each figure, its target and MET or NOT MET (the neighbour's also the raw
DELETE's p99). ``--sweep`` also runs the task at several fixed batch sizes and estimates from
those runs which batch sizes would meet the first two; ``--variants`` measures other ways of
doing ``cleanups.registry.delete_in_batches`` (bench/variants.py), swapped in for the task in
this process only (the project's files are not touched). Both work on either database.

Archive before delete. ``--archive`` also runs delete_old_rows (default batches, and
``--batch-size``) with the archive on: ``ctx.archive`` is a ``cleanups.tasks.archive.Archiver``
over a ``FileSystemStorage`` in a new directory of the workspace for each run, so every batch's
rows (and the rows that cascade from them) are written as a closed gzip JSON Lines part before
the batch's DELETE commits. The clock above times its batches the same way, so the archive
write is inside each batch's transaction. The parts are those the deleter records through
``ctx.archived`` (wrapped in the bench's context only); the time each part's ``write_lines``
takes is measured by a subclass of the Archiver that only times it (bench/delete_rows_archive.py).
After each run (outside the timing) the archive is checked, or the script stops with "CHECK
FAILED": each recorded part is in the storage with the recorded size and SHA-256, its lines are
the recorded row count, and all lines together are each deleted row exactly once, per model. The
report gives, for each table, rows/s with the archive on, off and for the raw DELETE, the ratios
archive-on / raw DELETE and archive-on / archive-off, the longest transaction with the archive
on, the archive's bytes per row (compressed part bytes / rows archived) and the neighbour's p99.
Targets (the archive on, its own, unchanged): at least 0.5x the raw DELETE's rows/s, no
transaction longer than 250 ms. It works on either database.

Stdout is only the Markdown report; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pgserver import ThrowawayPostgres  # no Django in it: the settings need its port


def chosen_database(argv: list[str]) -> str:
    """``--database``, read before Django starts: the database it names decides the settings
    (main() parses, and checks, every option again)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--database", default="sqlite")
    return early.parse_known_args(argv)[0].database


SERVER = ThrowawayPostgres() if chosen_database(sys.argv[1:]) == "postgres" else None
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
if SERVER is None:
    os.environ.pop("BENCH_DATABASE_URL", None)  # SQLite: bench.settings' own file
else:  # not running yet: main() starts it; Django connects only when asked to
    os.environ["BENCH_DATABASE_URL"] = SERVER.url("postgres")
    os.environ["DATABASE_POOL"] = "false"  # one connection, moved between databases

import django

django.setup()

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from bench import variants
from bench.benchapp.models import Child, Parent, PlainRow
from bench.delete_rows_archive import ArchiveProbe
from bench.delete_rows_data import (
    CHILDREN_PER_PARENT,
    ParentWrites,
    PlainWrites,
    PostgresWorkspace,
    RecentWrites,
    SQLiteWorkspace,
    Workspace,
    check_parents,
    check_plain,
    fail,
    fill_parents,
    fill_plain,
    say,
)
from bench.neighbour import RATE_PER_SECOND, Neighbour, summary
from cleanups import cleanup_tasks
from cleanups.registry import CleanupContext, get_task
from cleanups.tasks import deleter

db = connections[DEFAULT_DB_ALIAS]
Result = dict[str, float]

TARGET_RATIO = {"sqlite": 0.9, "postgresql": 0.8}[db.vendor]  # of the raw DELETE's rows/s
TARGET_TRANSACTION_MS = 100.0
TARGET_NEIGHBOUR_P99_MS = 50.0  # under
ARCHIVE_TARGET_RATIO = 0.5  # the archive on: of the raw DELETE's rows/s
ARCHIVE_TARGET_TRANSACTION_MS = 250.0
# Whether the deleter can be told how to batch: keyset (pk ranges) or the IN subquery.
KEYSET = "keyset" in inspect.signature(deleter.delete_in_batches).parameters


# The clock ------------------------------------------------------------------------------------

# Statements outside a transaction that keep no other writer waiting (SQLite's PRAGMA optimize
# may run ANALYZE, which takes the write lock).
NOT_BLOCKING = {
    "sqlite": ("SELECT", "PRAGMA"),
    "postgresql": ("SELECT", "SHOW", "SET ", "VACUUM", "ANALYZE"),
}
BLOCKING = {"sqlite": ("PRAGMA OPTIMIZE",), "postgresql": ()}


class TransactionClock:
    """How long each transaction on ``db`` lasts, from its BEGIN to its commit or rollback
    returning (see the module docstring: on SQLite from BEGIN IMMEDIATE returning, on
    PostgreSQL from its first statement)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._began: float | None = None
        self._not_blocking, self._blocking = NOT_BLOCKING[db.vendor], BLOCKING[db.vendor]

    @property
    def longest(self) -> float:
        return max(self.durations, default=0.0)

    def _execute(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        head = sql.lstrip()[:16].upper()
        begin = head.startswith("BEGIN")
        inside = not db.get_autocommit()  # in atomic(): SQLite's BEGIN comes just before it
        started = time.perf_counter()
        if inside and self._began is None and not begin:
            self._began = started  # PostgreSQL: psycopg sends BEGIN ahead of this statement
        result = execute(sql, params, many, context)
        now = time.perf_counter()
        if begin:
            self._began = now  # SQLite: BEGIN IMMEDIATE has returned, the write lock is held
        elif not inside and self._began is None and self._writes(head):
            self.durations.append(now - started)  # an autocommit write: its own transaction
        return result

    def _writes(self, head: str) -> bool:
        return head.startswith(self._blocking) or not head.startswith(self._not_blocking)

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


# Methods --------------------------------------------------------------------------------------

Method = Callable[[], int]  # deletes, returns the number of rows it deleted


def raw_delete(statements: list[str], cutoff: datetime) -> Method:
    def run() -> int:
        when = db.ops.adapt_datetimefield_value(cutoff)
        with transaction.atomic(), db.cursor() as cursor:  # one transaction
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


def task_name(batch_size: int | None, prefix: str = "delete_old_rows", mode: str = "") -> str:
    """E.g. ``delete_old_rows (default batches)``, ``delete_old_rows (IN batches, batch_size
    1000)``."""
    size = "default batches" if batch_size is None else f"batch_size {batch_size}"
    return f"{prefix} ({mode + ', ' if mode else ''}{size})"


IN_BATCHES = "IN batches"  # the mode name of delete_in_batches(..., keyset=False)


def in_batches() -> Callable:
    """delete_in_batches told to batch by ``pk IN (SELECT pk ... LIMIT n)``, not by key range."""
    return functools.partial(deleter.delete_in_batches, keyset=False)


def taking_only_its_options(function: Callable) -> Callable:
    """``function`` called with only the keyword options it declares: a variant in
    bench/variants.py may predate one the task now passes (``oldest_first``), which orders a
    capped run's rows and changes nothing here (the bench's runs have no cap)."""
    declared = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in declared.values()):
        return function

    @functools.wraps(function)
    def call(*args: Any, **options: Any) -> Any:
        dropped = sorted(set(options) - set(declared))
        if dropped:
            say(f"    ({function.__name__} takes no {', '.join(dropped)}: left out)")
        return function(*args, **{k: v for k, v in options.items() if k in declared})

    return call


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
            adapted = taking_only_its_options(replacement)
            with mock.patch.object(cleanup_tasks.rows, "delete_in_batches", adapted):
                task.function(ctx)
        return ctx.items

    return run


def measure(name: str, method: Method, writes: RecentWrites) -> tuple[Result, list[float]]:
    """One run of ``method``, timed, with the neighbour writing meanwhile: its result (with the
    rows the neighbour inserted) and the neighbour's latencies."""
    neighbour = Neighbour(writes)
    neighbour.start()
    clock = TransactionClock()
    try:
        with clock.running():
            started = time.perf_counter()
            deleted = method()
            seconds = time.perf_counter() - started
    finally:
        latencies = neighbour.stop()
    seen = summary(latencies)
    say(
        f"    {name}: {deleted:,} rows in {seconds:.2f} s, {len(clock.durations):,} "
        f"transaction(s), longest {clock.longest * 1000:.1f} ms; neighbour: {seen['ops']:,} "
        f"operations, p99 {seen['p99'] * 1000:.1f} ms, max {seen['max'] * 1000:.1f} ms"
    )
    result = {
        "rows": deleted,
        "seconds": seconds,
        "longest": clock.longest,
        "transactions": len(clock.durations),
        "inserted": neighbour.inserted,
    }
    return result, latencies


class Case:
    """One table (plain, or the cascading pair): its template, its check, the neighbour's writes
    on it, its results."""

    def __init__(
        self,
        title: str,
        tag: str,
        workspace: Workspace,
        template: str,
        check: Callable[[int], None],
        writes: Callable[[], RecentWrites],
    ) -> None:
        self.title, self.tag = title, tag
        self.workspace, self.template, self.check, self.writes = workspace, template, check, writes
        self.methods: dict[str, Method] = {}
        self.after: dict[str, Callable[[Result], Result]] = {}
        self.samples: dict[str, list[Result]] = {}
        self.latencies: dict[str, list[float]] = {}
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

        A method's result: the median run's seconds, the longest transaction of all its runs,
        the neighbour's p50, p99 and max over all its runs' operations.
        """
        for round_ in range(1, repeat + 1):
            for name, method in self.methods.items():
                say(f"{self.tag}: {name} (run {round_} of {repeat})")
                self.workspace.fresh_copy(self.template)
                result, latencies = measure(name, method, self.writes())
                self.check(int(result["inserted"]))
                if name in self.after:
                    result.update(self.after[name](result))
                self.samples.setdefault(name, []).append(result)
                self.latencies.setdefault(name, []).extend(latencies)
        for name, runs in self.samples.items():
            median = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
            longest = {
                key: max(r[key] for r in runs)
                for key in ("longest", "longest_write")
                if key in median
            }
            neighbour = {f"neighbour_{k}": v for k, v in summary(self.latencies[name]).items()}
            self.results[name] = {**median, **longest, **neighbour}

    @property
    def raw_rate(self) -> float:
        raw = self.results["raw DELETE"]
        return raw["rows"] / raw["seconds"]


# Report ---------------------------------------------------------------------------------------


def rate(result: Result) -> float:
    return result["rows"] / result["seconds"]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:,.1f}"


def table(case: Case, names: list[str]) -> list[str]:
    lines = [
        f"**{case.title}**",
        "",
        "| method | rows deleted | seconds | rows/s | vs raw DELETE | transactions "
        "| longest transaction (ms) | neighbour p50 (ms) | neighbour p99 (ms) "
        "| neighbour max (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        r = case.results[name]
        lines.append(
            f"| {name} | {int(r['rows']):,} | {r['seconds']:.2f} | {rate(r):,.0f} | "
            f"{rate(r) / case.raw_rate:.2f}x | {int(r['transactions']):,} | "
            f"{ms(r['longest'])} | {ms(r['neighbour_p50'])} | {ms(r['neighbour_p99'])} | "
            f"{ms(r['neighbour_max'])} |"
        )
    return lines


def meets(case: Case, name: str) -> tuple[bool, bool, bool]:
    """Throughput, longest transaction, neighbour p99: each within its target? (A neighbour
    that measured nothing, NaN, meets nothing.)"""
    r = case.results[name]
    return (
        rate(r) / case.raw_rate >= TARGET_RATIO,
        r["longest"] * 1000 <= TARGET_TRANSACTION_MS,
        r["neighbour_p99"] * 1000 < TARGET_NEIGHBOUR_P99_MS,
    )


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def verdict(case: Case, name: str) -> str:
    r = case.results[name]
    fast, short, calm = meets(case, name)
    return (
        f"- [{case.tag}] {name}: throughput {rate(r) / case.raw_rate:.2f}x raw DELETE "
        f"(target >= {TARGET_RATIO}x): {met(fast)}; longest transaction {ms(r['longest'])} ms "
        f"(target <= {TARGET_TRANSACTION_MS:.0f} ms): {met(short)}; neighbour p99 "
        f"{ms(r['neighbour_p99'])} ms (target < {TARGET_NEIGHBOUR_P99_MS:.0f} ms; raw DELETE "
        f"{ms(case.results['raw DELETE']['neighbour_p99'])} ms): {met(calm)}"
    )


def batch_size_needed(case: Case, sizes: list[int], names: list[str]) -> list[str]:
    """Which batch sizes would meet the throughput and transaction targets: measured (with the
    neighbour's too), and estimated from a fitted model.

    Model: a batch of B rows costs a + c*B seconds (a: per-transaction overhead, c: per row), so
    the run's seconds per row are c + a/B (least squares over the sweep) and a typical
    transaction lasts a + c*B. Throughput target: c + a/B <= raw seconds per row / TARGET_RATIO.
    Transaction target: a + c*B <= 100 ms (the longest measured also has checkpoint spikes).
    """
    met_all = [size for size, name in zip(sizes, names, strict=True) if all(meets(case, name))]
    lines = [
        f"- [{case.tag}] swept batch sizes meeting all three targets: "
        + (", ".join(f"{size:,}" for size in met_all) if met_all else "none")
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
        "| transactions | longest transaction (ms) | neighbour p99 (ms) | parts "
        "| archive bytes/row | in part writes | longest part write (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
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
            f"{ms(r['longest'])} | {ms(r['neighbour_p99'])} | {archive} |"
        )
    return lines


def archive_verdict(case: Case, off: str, on: str) -> str:
    r = case.results[on]
    ratio = rate(r) / case.raw_rate
    fast = ratio >= ARCHIVE_TARGET_RATIO
    short = r["longest"] * 1000 <= ARCHIVE_TARGET_TRANSACTION_MS
    return (
        f"- [{case.tag}] {on}: {rate(r):,.0f} rows/s (archive off {rate(case.results[off]):,.0f}, "
        f"raw DELETE {case.raw_rate:,.0f}); throughput {ratio:.2f}x raw DELETE (target >= "
        f"{ARCHIVE_TARGET_RATIO}x): {met(fast)}; "
        f"{rate(r) / rate(case.results[off]):.2f}x archive off; longest transaction "
        f"{ms(r['longest'])} ms (target <= {ARCHIVE_TARGET_TRANSACTION_MS:.0f} ms): "
        f"{met(short)}; archive {r['archive_bytes'] / max(r['archive_rows'], 1):.1f} bytes/row"
    )


# Main -----------------------------------------------------------------------------------------


def parse_args() -> tuple[argparse.Namespace, list[int]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="sqlite (default): files in a temporary directory; postgres: a throwaway server "
        "of the bench's own, durability off",
    )
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
    return args, sizes


def stop_on_sigterm() -> None:
    """SIGTERM ends the bench as Ctrl-C does: through the ``finally`` that stops the server."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    args, sizes = parse_args()
    stop_on_sigterm()
    started = time.perf_counter()
    workspace: Workspace | None = None
    try:
        if SERVER is not None:
            say(f"PostgreSQL {SERVER.version} on 127.0.0.1:{SERVER.port} (durability off)")
            SERVER.start()
            say(f"    cluster in {SERVER.root}")
            workspace = PostgresWorkspace()
        else:
            workspace = SQLiteWorkspace()
        report = run(args, sizes, workspace)
    finally:
        if workspace is not None:
            workspace.remove()
        if SERVER is not None:
            SERVER.stop()
    say(f"done in {time.perf_counter() - started:.0f} s")
    print("\n".join(report))


def database_label() -> str:
    if db.vendor == "postgresql":
        version = SERVER.version if SERVER is not None else "?"
        return f"PostgreSQL {version}, durability off"
    return "SQLite, WAL, IMMEDIATE"


def cases(
    args: argparse.Namespace, workspace: Workspace, now: datetime, cutoff: datetime
) -> tuple[Case, Case]:
    """The two tables: their templates (filled once), their checks, the neighbour's writes."""
    say(f"databases in {workspace.dir} ({database_label()})")
    empty = workspace.migrate()
    say(f"plain table template: {args.rows:,} old + {args.rows // 10:,} recent rows")
    plain_template = workspace.template("plain", lambda: fill_plain(args.rows, now), empty)
    say(f"cascade template: {args.parents:,} old + {args.parents // 10:,} recent parents")
    cascade_template = workspace.template("cascade", lambda: fill_parents(args.parents, now), empty)
    plain = Case(
        f"Plain table: {args.rows:,} old rows + {args.rows // 10:,} recent ({database_label()})",
        "plain",
        workspace,
        plain_template,
        lambda inserted: check_plain(args.rows, cutoff, inserted),
        lambda: PlainWrites(cutoff),
    )
    cascade = Case(
        f"Cascade: {args.parents:,} old parents x {CHILDREN_PER_PARENT} children + "
        f"{args.parents // 10:,} recent parents (rows = parents + children; {database_label()})",
        "cascade",
        workspace,
        cascade_template,
        lambda inserted: check_parents(args.parents, cutoff, inserted),
        lambda: ParentWrites(cutoff),
    )
    return plain, cascade


def run(args: argparse.Namespace, sizes: list[int], workspace: Workspace) -> list[str]:
    now = timezone.now()
    cutoff = now - timedelta(days=30)
    plain, cascade = cases(args, workspace, now, cutoff)
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
    the_task = [default, fixed]
    if KEYSET:
        the_task += [task_name(size, mode=IN_BATCHES) for size in (None, args.batch_size)]
    main_names = ["raw DELETE", "QuerySet.delete()", *the_task]
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
        if KEYSET:
            for size in (None, args.batch_size):
                case.add(task_name(size, mode=IN_BATCHES), task_delete(label, size, in_batches()))
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

    report = header(args)
    for case in (plain, cascade):
        report += [*table(case, main_names), ""]
    report += [
        f"**Targets** (each delete_old_rows: >= {TARGET_RATIO}x raw DELETE rows/s on "
        f"{'PostgreSQL' if db.vendor == 'postgresql' else 'SQLite'}, no transaction "
        f"> {TARGET_TRANSACTION_MS:.0f} ms, neighbour p99 < {TARGET_NEIGHBOUR_P99_MS:.0f} ms)",
        "",
    ]
    report += [verdict(case, name) for case in (plain, cascade) for name in the_task]
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
        report += archive_report((plain, cascade), archived)
    return report


def header(args: argparse.Namespace) -> list[str]:
    batching = (
        "delete_old_rows: the task as it is (keyset batches where the table allows); "
        f"'{IN_BATCHES}': delete_in_batches(..., keyset=False)."
        if KEYSET
        else "delete_in_batches has no keyset parameter (yet): delete_old_rows is measured as "
        "it is, with no keyset/IN comparison."
    )
    return [
        f"Each method: median of {args.repeat} run(s), each on a fresh copy of the same table "
        f"({database_label()}); longest transaction: the longest in any of its runs; "
        f"neighbour: another connection inserting and updating recent rows of the same table, "
        f"{RATE_PER_SECOND:.0f} operations/s, each in its own transaction, latency over all "
        f"runs. {batching}",
        "",
    ]


def archive_report(cases: tuple[Case, Case], archived: dict[str, str]) -> list[str]:
    report = [
        "",
        "**Archive before delete** (delete_old_rows with ctx.archive = an Archiver over a "
        "FileSystemStorage in a temporary directory: each batch's rows, and what cascades "
        "from them, written as a closed gzip JSON Lines part inside the batch's transaction; "
        "bytes/row: compressed part bytes / rows archived; in part writes: the share of the "
        "run's time spent in Archiver.write_lines: gzip and save)",
        "",
    ]
    for case in cases:
        report += [*archive_table(case, list(archived.items())), ""]
    report += [
        f"**Archive targets** (archive on: >= {ARCHIVE_TARGET_RATIO}x raw DELETE rows/s, "
        f"no transaction > {ARCHIVE_TARGET_TRANSACTION_MS:.0f} ms)",
        "",
    ]
    report += [archive_verdict(case, off, on) for case in cases for off, on in archived.items()]
    return report


if __name__ == "__main__":
    main()
