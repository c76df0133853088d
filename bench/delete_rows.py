"""Benchmark: delete_old_rows against one raw DELETE and QuerySet.delete(), on SQLite.

    .venv/bin/python bench/delete_rows.py [--rows 1000000] [--parents 200000] [--batch-size 1000]

Each method gets a fresh database holding the same rows: N old rows (60 to 31 days old) plus
10% recent ones (1 day old) that must stay. Reported per method: rows deleted per second, the
ratio to the raw DELETE, and the longest single transaction, timed from SQLite's own BEGIN to its
COMMIT (sqlite3's trace callback sees both), so it is the time any other writer could be kept
waiting. The cascading case deletes parents with two children each and checks no child is left
without its parent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

import django

django.setup()

from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from bench.benchapp.models import Child, Parent, PlainRow
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import CleanupContext, get_task

TARGET_RATIO = 0.7
TARGET_TRANSACTION_MS = 250.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TransactionClock:
    """Times every transaction on the connection: from BEGIN (or a lone statement) to COMMIT."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.count = 0
        self._began: float | None = None

    def __call__(self, sql: str) -> None:
        now = time.perf_counter()
        statement = sql.lstrip().upper()
        if statement.startswith("BEGIN"):
            self._began = now
        elif statement.startswith(("COMMIT", "ROLLBACK")) and self._began is not None:
            self._finish(now - self._began)
            self._began = None

    def _finish(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)
        self.count += 1

    def statement(self, seconds: float) -> None:
        """A statement run in autocommit mode is a transaction of its own."""
        self._finish(seconds)


def fresh_database(name: str) -> None:
    connection.close()
    path = Path(tempfile.gettempdir()) / f"cleanups-bench-{name}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    connection.settings_dict["NAME"] = str(path)
    call_command("migrate", verbosity=0)


def spread(count: int, oldest_days: float, newest_days: float) -> list[str]:
    now = datetime.now(UTC)
    step = (oldest_days - newest_days) * 86400 / max(count, 1)
    return [
        (now - timedelta(seconds=newest_days * 86400 + i * step)).isoformat() for i in range(count)
    ]


def fill(table: str, columns: str, rows: list[tuple]) -> None:
    raw = connection.connection
    placeholders = ", ".join("?" * len(rows[0]))
    chunk = max(len(rows) // 10, 1)
    for start in range(0, len(rows), chunk):
        with raw:
            raw.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({placeholders})",
                rows[start : start + chunk],
            )
        say(f"    filled {min(start + chunk, len(rows)):>9,} / {len(rows):,} {table} rows")


def fill_plain(old: int) -> None:
    recent = old // 10
    dates = spread(old, 60, 31) + spread(recent, 1.0, 1.0)
    fill(PlainRow._meta.db_table, "created_at, payload", [(d, "x" * 40) for d in dates])


def fill_parents(old: int) -> None:
    recent = old // 10
    dates = spread(old, 60, 31) + spread(recent, 1.0, 1.0)
    fill(Parent._meta.db_table, "id, created_at", list(enumerate(dates, start=1)))
    children = [(pid, "y" * 20) for pid in range(1, len(dates) + 1) for _ in range(2)]
    fill(Child._meta.db_table, "parent_id, payload", children)


def a_run() -> CleanupRun:
    """A real run record, so delete_old_rows pays for writing its counts as it does in a worker."""
    schedule = CleanupSchedule.objects.create(name="bench", interval=timedelta(hours=1))
    return CleanupRun.objects.create(
        schedule=schedule, iteration=1, task="delete_old_rows", started_at=timezone.now()
    )


def measure(name: str, delete: Callable[[TransactionClock], int]) -> dict[str, float]:
    clock = TransactionClock()
    connection.ensure_connection()
    connection.connection.set_trace_callback(clock)
    started = time.perf_counter()
    deleted = delete(clock)
    seconds = time.perf_counter() - started
    connection.connection.set_trace_callback(None)
    say(f"    {name}: {deleted:,} rows in {seconds:.2f} s")
    return {
        "rows": deleted,
        "seconds": seconds,
        "longest": clock.longest,
        "transactions": clock.count,
    }


def raw_delete(sql: list[str], cutoff: str) -> Callable[[TransactionClock], int]:
    def run(clock: TransactionClock) -> int:
        raw = connection.connection
        started = time.perf_counter()
        with raw:  # one transaction for every statement
            raw.execute("BEGIN IMMEDIATE")
            deleted = sum(raw.execute(statement, [cutoff]).rowcount for statement in sql)
        clock.statement(time.perf_counter() - started)
        return deleted

    return run


def queryset_delete(model: type, cutoff: datetime) -> Callable[[TransactionClock], int]:
    def run(clock: TransactionClock) -> int:
        started = time.perf_counter()
        deleted, _ = model.objects.filter(created_at__lt=cutoff).delete()
        # The fast path is one autocommit statement; the collector's path one atomic block.
        if clock.count == 0:
            clock.statement(time.perf_counter() - started)
        return deleted

    return run


def task_delete(model_label: str, batch_size: int) -> Callable[[TransactionClock], int]:
    def run(clock: TransactionClock) -> int:
        task = get_task("delete_old_rows")
        params = task.clean_params(
            {
                "model": model_label,
                "field": "created_at",
                "older_than_days": 30,
                "batch_size": batch_size,
            }
        )
        ctx = CleanupContext(params, run=a_run())
        task.function(ctx)
        return ctx.items

    return run


def check_plain(old: int) -> None:
    cutoff = timezone.now() - timedelta(days=30)
    left_old = PlainRow.objects.filter(created_at__lt=cutoff).count()
    left = PlainRow.objects.count()
    assert left_old == 0, f"{left_old} old rows left"
    assert left == old // 10, f"{left} rows left, expected the {old // 10} recent ones"


def check_parents(old: int) -> None:
    recent = old // 10
    assert Parent.objects.count() == recent, Parent.objects.count()
    orphans = Child.objects.exclude(parent__in=Parent.objects.all()).count()
    assert orphans == 0, f"{orphans} children outlived their parents"
    assert Child.objects.count() == 2 * recent, Child.objects.count()


def table(title: str, results: dict[str, dict[str, float]]) -> list[str]:
    raw = results["raw DELETE"]
    raw_rate = raw["rows"] / raw["seconds"]
    lines = [
        f"**{title}**",
        "",
        "| method | rows deleted | seconds | rows/s | vs raw DELETE | longest transaction |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        rate = r["rows"] / r["seconds"]
        lines.append(
            f"| {name} | {int(r['rows']):,} | {r['seconds']:.2f} | {rate:,.0f} | "
            f"{rate / raw_rate:.2f}x | {r['longest'] * 1000:,.0f} ms |"
        )
    return lines


def verdict(name: str, results: dict[str, dict[str, float]]) -> str:
    ours, raw = results[name], results["raw DELETE"]
    ratio = (ours["rows"] / ours["seconds"]) / (raw["rows"] / raw["seconds"])
    longest_ms = ours["longest"] * 1000
    ok = ratio >= TARGET_RATIO and longest_ms <= TARGET_TRANSACTION_MS
    return (
        f"{name}: {ratio:.2f}x raw DELETE (target >= {TARGET_RATIO}x), longest transaction "
        f"{longest_ms:.0f} ms (target <= {TARGET_TRANSACTION_MS:.0f} ms): "
        f"{'MET' if ok else 'NOT MET'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="old plain rows (plus 10%% recent)"
    )
    parser.add_argument("--parents", type=int, default=200_000, help="old parents, 2 children each")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        help="a fixed delete_old_rows batch_size to compare with its default (self-sizing) batches",
    )
    args = parser.parse_args()
    if connection.vendor != "sqlite":
        sys.exit("bench/delete_rows.py measures SQLite; unset DATABASE_URL.")
    ours = "delete_old_rows (default batches)"
    fixed = f"delete_old_rows (batch_size {args.batch_size})"
    cutoff = timezone.now() - timedelta(days=30)

    plain: dict[str, dict[str, float]] = {}
    table_name = PlainRow._meta.db_table
    for name, delete in [
        (
            "raw DELETE",
            raw_delete([f"DELETE FROM {table_name} WHERE created_at < ?"], cutoff.isoformat()),
        ),
        ("QuerySet.delete()", queryset_delete(PlainRow, cutoff)),
        (ours, task_delete("benchapp.PlainRow", None)),
        (fixed, task_delete("benchapp.PlainRow", args.batch_size)),
    ]:
        say(f"plain table, {name}:")
        fresh_database("plain")
        fill_plain(args.rows)
        plain[name] = measure(name, delete)
        check_plain(args.rows)

    cascade: dict[str, dict[str, float]] = {}
    parents, children = Parent._meta.db_table, Child._meta.db_table
    raw_cascade = [
        f"DELETE FROM {children} WHERE parent_id IN (SELECT id FROM {parents} WHERE created_at < ?)",
        f"DELETE FROM {parents} WHERE created_at < ?",
    ]
    for name, delete in [
        ("raw DELETE", raw_delete(raw_cascade, cutoff.isoformat())),
        ("QuerySet.delete()", queryset_delete(Parent, cutoff)),
        (ours, task_delete("benchapp.Parent", None)),
        (fixed, task_delete("benchapp.Parent", args.batch_size)),
    ]:
        say(f"cascading pair, {name}:")
        fresh_database("cascade")
        fill_parents(args.parents)
        cascade[name] = measure(name, delete)
        check_parents(args.parents)

    lines = [
        *table(
            f"Plain table: {args.rows:,} old rows + {args.rows // 10:,} recent (SQLite, WAL)", plain
        ),
        "",
        *table(
            f"Cascade: {args.parents:,} old parents x 2 children + {args.parents // 10:,} recent "
            "(rows = parents + children; no orphaned child left)",
            cascade,
        ),
        "",
        verdict(ours, plain) + " [plain]",
        verdict(fixed, plain) + " [plain]",
        verdict(ours, cascade) + " [cascade]",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
