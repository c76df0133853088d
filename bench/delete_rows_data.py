"""The data of bench/delete_rows.py: its databases, how they are filled and checked, and what the
neighbour writes (its module docstring says what and why; this is how, per database).

SQLite: files in a temporary directory, each method's copy a byte copy of its template.
PostgreSQL: databases on the bench's throwaway server, each method's copy a ``CREATE DATABASE
... TEMPLATE``; both are reached through Django's default connection, repointed (``NAME``).
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Max, Min, Model, QuerySet
from django.utils import timezone

from bench.benchapp.models import Child, Parent, PlainRow

CHILDREN_PER_PARENT = 2

db = connections[DEFAULT_DB_ALIAS]  # the main thread's connection


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    """Stop the benchmark: a method deleted the wrong rows, so its timing means nothing."""
    raise SystemExit(f"bench/delete_rows.py: CHECK FAILED: {message}")


def open_database(name: str) -> None:
    db.close()
    db.settings_dict["NAME"] = name  # the same dict every thread's connection is made from
    db.ensure_connection()


# Workspaces -----------------------------------------------------------------------------------


class SQLiteWorkspace:
    """A temporary directory: an empty migrated database, filled templates, the working copy."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cleanups-bench-"))
        self.work = self.dir / "work.sqlite3"

    def close(self) -> None:
        """Close the connection with the WAL folded into the file, so the file alone is the data."""
        if db.connection is not None:
            db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()

    def migrate(self) -> str:
        empty = self.dir / "empty.sqlite3"
        open_database(str(empty))
        call_command("migrate", verbosity=0)
        self.close()
        return str(empty)

    def template(self, name: str, fill: Callable[[], None], empty: str) -> str:
        path = self.dir / f"{name}.sqlite3"
        shutil.copyfile(empty, path)
        open_database(str(path))
        fill()
        self.close()
        return str(path)

    def fresh_copy(self, template: str) -> None:
        """Point the connection at a new copy of ``template``: the identical table, again."""
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.work}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(template, self.work)
        open_database(str(self.work))

    def remove(self) -> None:
        db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresWorkspace:
    """Databases on the bench's own server (gone with it), and a directory for the archives.

    A template is filled once and vacuumed (visibility map and planner statistics set, as
    autovacuum keeps a table that has grown over time); the working copy is made from it with
    ``CREATE DATABASE ... TEMPLATE`` (a file copy: the identical table, its statistics too).
    """

    WORK = "bench_work"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cleanups-bench-"))

    def _admin(self, *statements: str) -> None:
        """Statements on the server's maintenance database (CREATE/DROP DATABASE)."""
        db.close()  # a database being copied or dropped must have no connection
        with db._nodb_cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)

    def _copy_of(self, template: str) -> str:
        with db._nodb_cursor() as cursor:
            cursor.execute("SHOW server_version_num")
            (version,) = cursor.fetchone()
        # FILE_COPY (PostgreSQL 15+; earlier servers only copy files): much less than WAL_LOG's
        # write of every page through the WAL, for a template this size.
        strategy = " STRATEGY FILE_COPY" if int(version) >= 150000 else ""
        return f'TEMPLATE "{template}"{strategy}'

    def migrate(self) -> str:
        empty = "bench_empty"
        self._admin(f'CREATE DATABASE "{empty}"')
        open_database(empty)
        call_command("migrate", verbosity=0)
        db.close()
        return empty

    def template(self, name: str, fill: Callable[[], None], empty: str) -> str:
        database = f"bench_{name}"
        self._admin(f'CREATE DATABASE "{database}" {self._copy_of(empty)}')
        open_database(database)
        fill()
        with db.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        db.close()
        return database

    def fresh_copy(self, template: str) -> None:
        self._admin(
            f'DROP DATABASE IF EXISTS "{self.WORK}" WITH (FORCE)',
            f'CREATE DATABASE "{self.WORK}" {self._copy_of(template)}',
        )
        open_database(self.WORK)

    def remove(self) -> None:
        db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


Workspace = SQLiteWorkspace | PostgresWorkspace


# Filling --------------------------------------------------------------------------------------


def spans(old: int) -> list[tuple[int, float, float]]:
    """(rows, oldest, newest age in days): ``old`` rows 60 to 31 days old, then old // 10 recent
    ones (1 to 1.04 days old), each span spread evenly, oldest first."""
    return [(old, 60, 31), (old // 10, 1 + 1 / 24, 1)]


def step_seconds(count: int, oldest_days: float, newest_days: float) -> float:
    return (oldest_days - newest_days) * 86400 / max(count - 1, 1)


def chunk_of(total: int) -> int:
    """Rows go in chunks of 10%, each its own transaction, as a table that grew would hold them."""
    return max(-(-total // 10), 1)


def fill_plain(old: int, now: datetime) -> None:
    (_pg_fill_plain if db.vendor == "postgresql" else _sqlite_fill_plain)(old, now)


def fill_parents(old: int, now: datetime) -> None:
    (_pg_fill_parents if db.vendor == "postgresql" else _sqlite_fill_parents)(old, now)


def _sqlite_dates(old: int, now: datetime) -> Iterator[str]:
    for count, oldest_days, newest_days in spans(old):
        oldest = now - timedelta(days=oldest_days)
        step = step_seconds(count, oldest_days, newest_days)
        for i in range(count):
            yield db.ops.adapt_datetimefield_value(oldest + timedelta(seconds=i * step))


def _sqlite_insert(table: str, columns: list[str], rows: Iterator[tuple], total: int) -> None:
    """executemany in chunks, each its own transaction, a line on stderr per chunk."""
    raw = db.connection
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    chunk = chunk_of(total)
    done = 0
    while done < total:
        batch = [row for _, row in zip(range(chunk), rows, strict=False)]
        raw.execute("BEGIN")
        raw.executemany(sql, batch)
        raw.execute("COMMIT")
        done += len(batch)
        say(f"    filled {done:>9,} / {total:,} {table} rows ({done / total:.0%})")


def _sqlite_fill_plain(old: int, now: datetime) -> None:
    total = old + old // 10
    rows = ((when, "x" * 40) for when in _sqlite_dates(old, now))
    _sqlite_insert(PlainRow._meta.db_table, ["created_at", "payload"], rows, total)


def _sqlite_fill_parents(old: int, now: datetime) -> None:
    total = old + old // 10
    rows = ((pk, when) for pk, when in enumerate(_sqlite_dates(old, now), start=1))
    _sqlite_insert(Parent._meta.db_table, ["id", "created_at"], rows, total)
    children = (
        (pk, f"child {n} of {pk}") for pk in range(1, total + 1) for n in range(CHILDREN_PER_PARENT)
    )
    _sqlite_insert(
        Child._meta.db_table, ["parent_id", "payload"], children, total * CHILDREN_PER_PARENT
    )


def _pg_series(sql: str, table: str, old: int, now: datetime) -> None:
    """``sql`` once per chunk of each span, each chunk its own transaction: the rows are made by
    the server (``generate_series``). Its named parameters: the span's ``oldest`` timestamp and
    ``step`` in seconds, the ``offset`` of its first row, the chunk's ``low`` and ``high``."""
    total = old + old // 10
    chunk, done, offset = chunk_of(total), 0, 0
    for count, oldest_days, newest_days in spans(old):
        span = {
            "oldest": now - timedelta(days=oldest_days),
            "step": step_seconds(count, oldest_days, newest_days),
            "offset": offset,
        }
        for low in range(0, count, chunk):
            high = min(low + chunk, count) - 1
            with transaction.atomic(), db.cursor() as cursor:
                cursor.execute(sql, {**span, "low": low, "high": high})
            done += high - low + 1
            say(f"    filled {done:>9,} / {total:,} {table} rows ({done / total:.0%})")
        offset += count


def _pg_fill_plain(old: int, now: datetime) -> None:
    table = PlainRow._meta.db_table
    sql = (
        f"INSERT INTO {db.ops.quote_name(table)} (created_at, payload) "
        "SELECT %(oldest)s + make_interval(secs => i * %(step)s), repeat('x', 40) "
        "FROM generate_series(%(low)s, %(high)s) AS i"
    )
    _pg_series(sql, table, old, now)


def _pg_fill_parents(old: int, now: datetime) -> None:
    table = Parent._meta.db_table
    parents = db.ops.quote_name(table)
    sql = (
        f"INSERT INTO {parents} (id, created_at) "
        "SELECT %(offset)s + i + 1, %(oldest)s + make_interval(secs => i * %(step)s) "
        "FROM generate_series(%(low)s, %(high)s) AS i"
    )
    _pg_series(sql, table, old, now)
    with db.cursor() as cursor:  # the ids were given: new parents must be numbered after them
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence(%s, 'id'), (SELECT max(id) FROM {parents}))",
            [parents],
        )
    _pg_fill_children(old + old // 10)


def _pg_fill_children(parents: int) -> None:
    table = Child._meta.db_table
    total, chunk = parents * CHILDREN_PER_PARENT, chunk_of(parents)
    sql = (
        f"INSERT INTO {db.ops.quote_name(table)} (parent_id, payload) "
        "SELECT p, 'child ' || n || ' of ' || p "
        "FROM generate_series(%s, %s) AS p, generate_series(0, %s) AS n ORDER BY p, n"
    )
    for low in range(1, parents + 1, chunk):
        high = min(low + chunk - 1, parents)
        with transaction.atomic(), db.cursor() as cursor:
            cursor.execute(sql, [low, high, CHILDREN_PER_PARENT - 1])
        done = high * CHILDREN_PER_PARENT
        say(f"    filled {done:>9,} / {total:,} {table} rows ({done / total:.0%})")


# Checks ---------------------------------------------------------------------------------------


def check_plain(old: int, cutoff: datetime, inserted: int) -> None:
    """No old row is left, and exactly the recent ones are (the neighbour's ``inserted`` too)."""
    left_old = PlainRow.objects.filter(created_at__lt=cutoff).count()
    left = PlainRow.objects.count()
    expected = old // 10 + inserted
    if left_old:
        fail(f"{left_old:,} old PlainRow rows are left")
    if left != expected:
        fail(
            f"{left:,} PlainRow rows are left, expected the {old // 10:,} recent ones and the "
            f"neighbour's {inserted:,}"
        )


def check_parents(old: int, cutoff: datetime, inserted: int) -> None:
    """As check_plain, and no child outlived its parent, every recent parent has its children."""
    recent = old // 10 + inserted
    left_old = Parent.objects.filter(created_at__lt=cutoff).count()
    parents = Parent.objects.count()
    orphans = Child.objects.exclude(parent_id__in=Parent.objects.values("pk")).count()
    children = Child.objects.count()
    if left_old:
        fail(f"{left_old:,} old parents are left")
    if parents != recent:
        fail(
            f"{parents:,} parents are left, expected the {old // 10:,} recent ones and the "
            f"neighbour's {inserted:,}"
        )
    if orphans:
        fail(f"{orphans:,} children outlived their parents")
    if children != CHILDREN_PER_PARENT * parents:
        fail(f"{children:,} children are left, expected {CHILDREN_PER_PARENT * parents:,}")


# The neighbour's writes -----------------------------------------------------------------------


class RecentWrites:
    """The neighbour's writes on a table (bench.neighbour.Writes): an insert of a row created
    now; an update of a random row among the recent ones (by key, and still newer than the
    cutoff, so that no old row is ever touched). Run in the neighbour's thread."""

    model: type[Model]

    def __init__(self, cutoff: datetime, seed: int = 1) -> None:
        self.cutoff = cutoff
        self.random = random.Random(seed)
        self.low = self.high = 0

    def prepare(self) -> None:
        bounds = self.model.objects.filter(created_at__gte=self.cutoff).aggregate(
            low=Min("pk"), high=Max("pk")
        )
        if bounds["low"] is None:
            fail(f"no recent {self.model.__name__} row for the neighbour to update")
        self.low, self.high = bounds["low"], bounds["high"]

    def recent(self) -> QuerySet[Any]:
        pk = self.random.randint(self.low, self.high)
        return self.model.objects.filter(pk=pk, created_at__gte=self.cutoff)


class PlainWrites(RecentWrites):
    model = PlainRow

    def insert(self) -> int:
        PlainRow.objects.create(created_at=timezone.now(), payload="neighbour")
        return 1

    def update(self) -> None:
        self.recent().update(payload=f"neighbour {self.random.randrange(10**6)}")


class ParentWrites(RecentWrites):
    """A new parent comes with its children (the check wants every parent to have them)."""

    model = Parent

    def insert(self) -> int:
        parent = Parent.objects.create(created_at=timezone.now())
        Child.objects.bulk_create(
            Child(parent=parent, payload=f"neighbour child {n}") for n in range(CHILDREN_PER_PARENT)
        )
        return 1

    def update(self) -> None:
        self.recent().update(created_at=timezone.now() - timedelta(days=1))
