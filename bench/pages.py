"""Benchmark: the pages at 1,000 runs and at 1,000,000 runs (1,000 schedules), SQLite.

    .venv/bin/python bench/pages.py [--schedules 1000] [--runs 1000000] [--repeat 7]
    .venv/bin/python bench/pages.py --schedules 10000 --runs 1000000   # a fleet

(from the project root; it uses bench.settings, whatever DJANGO_SETTINGS_MODULE or DATABASE_URL
say, and leaves nothing behind). SQLite by default; on PostgreSQL with
``BENCH_DATABASE_URL=postgres://user@host:port/any``, where it creates a database of its own and
drops it at the end (bin/_postgres.sh starts a throwaway server).

Data. A fresh database is migrated in a new temporary directory and a superuser created. It gets
``--schedules`` schedules (bulk inserted with executemany) and as
many runs: the small case. By default (``--small-layout full``) schedule 1, whose pages are
timed, has 100 of them (its chart's full width, two pages of history) and the next 900
schedules one each, so that a page shows as much at both sizes and the ratio measures the data,
not a page drawing 50 rows instead of 1; ``--small-layout even`` gives every schedule one run.
Every page is timed. Then the runs are topped up to ``--runs``
in all (about ``--runs / --schedules`` per schedule, iterations 1..N per schedule), inserted in
the order a growing table gets them: oldest first, the schedules interleaved, so started_at
rises with the primary key. The runs are spread over the last 60 days, the newest few within
the last 24 hours; statuses are a fixed pseudo-random mix of succeeded, failed, skipped and
interrupted; every run but a skipped one has a planned time, 5 to 50 ms before its start (one
in fifty up to 2 s), so the dashboard's p99 lateness has runs to read. One running schedule in
fifty is late (its next run overdue) and one in a hundred recovering, so the dashboard's
"needs attention first" order has more than the failing ones to sort. Every page is timed again.

Timing. Each page is requested through django.test.Client as the superuser (force_login): one
warm-up request (which must answer 200), then ``--repeat`` timed requests, of which the median
counts; one more request under CaptureQueriesContext counts its SQL queries. The engine is not
running: the client points at a closed local port, so pages take their "engine unreachable"
path at once (a refused connection), and ENGINE_CALL_TIMEOUT is short in case it were not.

The dashboard is timed three ways: ``/``, ``status.json`` as its first refresh asks (every row)
and ``status.json ?since=`` as every later one asks (with the token of the previous answer:
the data stands still, so it sends the totals and hardly a row, only one whose "4 minutes ago"
has turned 5).

Target: no page more than 2x slower at the large size than at the small one, and the same
number of SQL queries at both; the dashboard's pages, at most DASHBOARD_TARGET_MS at the large
size, whatever the number of schedules. For every page that misses it, the report names the
page's slowest query at the large size with SQLite's EXPLAIN QUERY PLAN.

Stdout is only the Markdown report; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"


def _closed_port() -> int:
    """A local port nothing listens on: one the OS just handed out and took back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


os.environ.pop("ENDPOINT", None)  # the embedded engine's address: 127.0.0.1 and the port below
os.environ["EMBEDDED_ENGINE_PORT"] = str(_closed_port())
os.environ["ENGINE_CALL_TIMEOUT"] = "0.5"  # a refused connection fails at once anyway

import django

django.setup()

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext, setup_test_environment
from django.urls import reverse
from django.utils import timezone

from cleanups.models import INSTANCE_ID_PREFIX, CleanupRun, CleanupSchedule

TARGET_RATIO = 2.0
DASHBOARD_TARGET_MS = 150.0
DASHBOARD_PAGES = ("dashboard /", "status.json", "status.json ?since=")
FULL_PAGE = 100  # the schedule page's chart draws 100 runs; a run-history page shows 50
DAYS = 60
CHUNK = 50_000  # runs per executemany transaction
# Status mix of the runs (weights): mostly succeeded, some failed, skipped, interrupted.
STATUS_WEIGHTS = {"succeeded": 85, "failed": 8, "skipped": 5, "interrupted": 2}
FIRST_STATUSES = ["failed", "succeeded", "succeeded", "succeeded", "skipped", "interrupted"]
TASKS = [("expired_sessions", {}), ("sample", {"seconds": 1})]

db = connections[DEFAULT_DB_ALIAS]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Data -----------------------------------------------------------------------------------------


def when(moment: datetime) -> Any:
    """A datetime as Django stores it in this database."""
    return db.ops.adapt_datetimefield_value(moment)


def span(length: timedelta) -> Any:
    """A duration as Django stores it: microseconds in SQLite, an interval in PostgreSQL."""
    return CleanupRun._meta.get_field("duration").get_db_prep_value(length, db)


def insert(table: str, columns: list[str], rows: Iterator[tuple], total: int, what: str) -> None:
    """executemany in chunks, one transaction per chunk, a progress line on stderr per chunk."""
    names = ", ".join(f'"{column}"' for column in columns)
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({", ".join(["%s"] * len(columns))})'
    done = 0
    while done < total:
        batch = [row for _, row in zip(range(CHUNK), rows, strict=False)]
        if not batch:
            break
        with transaction.atomic(), db.cursor() as cursor:
            cursor.executemany(sql, batch)
        done += len(batch)
        say(f"    {what}: {done:>9,} / {total:,} ({done / total:.0%})")


def fill_schedules(count: int, now: datetime) -> None:
    """``count`` schedules, every NOT NULL column given (as the migrations define them)."""
    created = when(now - timedelta(days=DAYS + 1))

    def rows() -> Iterator[tuple]:
        for pk in range(1, count + 1):
            task, params = TASKS[pk % len(TASKS)]
            state = "paused" if pk % 10 == 0 else "running"
            # Late: its next run overdue and not begun (its newest run was planned before).
            late = state == "running" and pk % 50 == 7
            yield (
                pk,
                f"schedule {pk:06}",
                task,
                json.dumps(params),
                span(timedelta(minutes=5)),  # interval
                state,
                f"{INSTANCE_ID_PREFIX}{pk}",
                0,  # current_iteration, set by fill_runs
                1,  # start_iteration
                when(now + timedelta(minutes=-1 if late else 5)),  # next_run_at
                created,
                created,
                False,  # dry_run
                "fixed_delay",
                0,  # consecutive_failures
                "",  # cron
                False,  # failure_notified
                "",  # last_error
                0,  # max_retries
                "run_once",
                "",  # notify_email
                0,  # pause_after_failures
                0,  # recover_attempts
                "",  # status_reason
                "UTC",
                0,  # generation
                when(now - timedelta(minutes=3)) if pk % 100 == 3 else None,  # recovering_since
                "",  # managed_by: made in the admin
                "",  # declared_state
                "[]",  # alert_webhooks
                False,  # vacuum
                when(now - timedelta(days=1)),  # changed_at
            )

    columns = [
        "id",
        "name",
        "task",
        "params",
        "interval",
        "desired_state",
        "instance_id",
        "current_iteration",
        "start_iteration",
        "next_run_at",
        "created_at",
        "updated_at",
        "dry_run",
        "cadence",
        "consecutive_failures",
        "cron",
        "failure_notified",
        "last_error",
        "max_retries",
        "missed_runs",
        "notify_email",
        "pause_after_failures",
        "recover_attempts",
        "status_reason",
        "timezone",
        "generation",
        "recovering_since",
        "managed_by",
        "declared_state",
        "alert_webhooks",
        "vacuum",
        "changed_at",
    ]
    insert(CleanupSchedule._meta.db_table, columns, rows(), count, "schedules")


RUN_COLUMNS = [
    "schedule_id",
    "iteration",
    "status",
    "trigger",
    "triggered_by",
    "reason",
    "config",
    "task",
    "planned_at",
    "started_at",
    "finished_at",
    "duration",
    "dry_run",
    "items_deleted",
    "details",
    "parts",
    "message",
    "error",
    "traceback",
    "worker",
    "attempts",
    # Safety: nothing held, approved, archived or restored.
    "review",
    "approved_by",
    "rejected_by",
    "archive_parts",
    "restores",
    # Kind to the database: never held back.
    "throttled_seconds",
]


def per_schedule(total: int, schedules: int) -> list[int]:
    """How many runs each schedule gets so that they add up to ``total`` (at least one each)."""
    base, extra = divmod(max(total, schedules), schedules)
    return [base + (1 if index < extra else 0) for index in range(schedules)]


def fill_runs(
    schedules: int, total: int, now: datetime, small: Callable[[int, int], bool], want: bool
) -> None:
    """The runs of the ``total``-run layout for which ``small(schedule pk, iteration)`` is
    ``want``, oldest first with the schedules interleaved.

    Iteration i of a schedule with N runs starts (N - i) / (N - 1) of DAYS days ago (the newest
    minutes ago, so the last 24 hours hold about N / DAYS runs of each schedule), plus a small
    per-schedule offset, so started_at rises with the insertion order.
    """
    counts = per_schedule(total, schedules)
    most = max(counts)
    step = timedelta(days=DAYS) / max(most - 1, 1)
    rng = random.Random(20_240_601 + want)
    statuses, weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    config = {
        task: json.dumps({"task": task, "params": params, "dry_run": False, "interval": 300.0})
        for task, params in TASKS
    }
    details = json.dumps({"targets": {"sessions.Session": {"items": 3, "bytes": 0}}})
    todo = sum(
        small(index + 1, iteration) == want
        for index, count in enumerate(counts)
        for iteration in range(1, count + 1)
    )

    def rows() -> Iterator[tuple]:
        for iteration in range(1, most + 1):
            for index, count in enumerate(counts):
                if iteration > count or small(index + 1, iteration) != want:
                    continue
                pk = index + 1
                task = TASKS[pk % len(TASKS)][0]
                started = (
                    now
                    - timedelta(minutes=5)
                    - step * (count - iteration)
                    + step * (index / schedules - 1)
                )
                status = (
                    FIRST_STATUSES[index % len(FIRST_STATUSES)]
                    if iteration == 1  # the small case: every status, the first schedule failed
                    else rng.choices(statuses, weights)[0]
                )
                skipped = status == "skipped"
                seconds = 0 if skipped else rng.randint(1, 30)
                lateness = timedelta(
                    milliseconds=rng.randint(5, 2000 if rng.random() < 0.02 else 50)
                )
                yield (
                    pk,
                    iteration,
                    status,
                    "scheduled",
                    "",
                    "overran" if skipped else "",
                    config[task],
                    task,
                    None if skipped else when(started - lateness),
                    when(started),
                    None if skipped else when(started + timedelta(seconds=seconds)),
                    None if skipped else span(timedelta(seconds=seconds)),
                    False,
                    0 if skipped else rng.randint(0, 500),
                    "{}" if skipped else details,
                    1,
                    "skipped: the previous run overran" if skipped else f"{status}",
                    "boom: something went wrong" if status == "failed" else "",
                    "Traceback (most recent call last): ..." if status == "failed" else "",
                    "" if skipped else "bench-worker-1",
                    1,
                    "{}",
                    "",
                    "",
                    "[]",
                    "[]",
                    0.0,
                )

    if todo:
        insert(CleanupRun._meta.db_table, RUN_COLUMNS, rows(), todo, "runs")
    with db.cursor() as cursor:  # the schedules' newest iteration, as the activities keep it
        cursor.execute(
            f"UPDATE {CleanupSchedule._meta.db_table} SET current_iteration = COALESCE(("
            f"SELECT MAX(iteration) FROM {CleanupRun._meta.db_table} "
            f"WHERE schedule_id = {CleanupSchedule._meta.db_table}.id), 0)"
        )


def analyze() -> None:
    """PostgreSQL's planner statistics and visibility map, as autovacuum keeps them on a table
    in use (without the map, no index-only scans)."""
    if db.vendor == "postgresql":
        with db.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
            cursor.execute(
                "SELECT relallvisible, relpages FROM pg_class WHERE relname = %s",
                [CleanupRun._meta.db_table],
            )
            visible, pages = cursor.fetchone()
            say(f"    VACUUM ANALYZE: {visible:,} of {pages:,} run pages all-visible")


# Pages ----------------------------------------------------------------------------------------


def page_urls(client: Client) -> dict[str, str]:
    schedule = CleanupSchedule.objects.order_by("pk").first()
    assert schedule is not None, "no schedules"
    run = schedule.runs.order_by("-iteration").first()
    assert run is not None, "no runs"
    runs = reverse("cleanups:schedule_runs", args=[schedule.pk])
    status = reverse("cleanups:dashboard_status")
    # The token a refresh gets and sends back with the next one (a steady refresh).
    since = client.get(status).json()["since"]
    return {
        "dashboard /": reverse("cleanups:dashboard"),
        "schedule page": reverse("cleanups:schedule_detail", args=[schedule.pk]),
        "schedule run history": runs,
        "schedule run history ?status=failed": f"{runs}?status=failed",
        "all runs": reverse("cleanups:runs"),
        "all runs ?status=failed": reverse("cleanups:runs") + "?status=failed",
        "run page": reverse("cleanups:run_detail", args=[run.pk]),
        "status.json": status,
        "status.json ?since=": f"{status}?since={since}",
        "admin schedule list": reverse("admin:cleanups_cleanupschedule_changelist"),
    }


class Result:
    """A page's median time and its queries, each with the time it takes to its last row."""

    def __init__(self, ms: float, queries: list[tuple[str, float]], drawn: str) -> None:
        self.ms = ms
        self.queries = queries
        self.drawn = drawn


def fetch_ms(sql: str) -> float:
    """One captured query run again to its last row (SQLite computes most rows lazily, while
    they are fetched, so CaptureQueriesContext's time, which ends at execute(), misses them)."""
    started = time.perf_counter()
    if sql.lstrip().upper().startswith("SELECT"):
        with db.cursor() as cursor:
            cursor.execute(sql)
            cursor.fetchall()
    return (time.perf_counter() - started) * 1000


def measure(client: Client, repeat: int, tag: str) -> dict[str, Result]:
    results: dict[str, Result] = {}
    for name, url in page_urls(client).items():
        warm = client.get(url)
        if warm.status_code != 200:
            raise SystemExit(f"bench/pages.py: {name} ({url}) answered {warm.status_code}")
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            client.get(url)
            times.append(time.perf_counter() - started)
        with CaptureQueriesContext(db) as captured:
            client.get(url)
        queries = [(query["sql"], fetch_ms(query["sql"])) for query in captured.captured_queries]
        html = warm.content.decode()
        drawn = f"{html.count('<tr')}, {html.count('mark mark-')}"
        results[name] = Result(statistics.median(times) * 1000, queries, drawn)
        say(f"    [{tag}] {name}: {results[name].ms:.1f} ms, {len(captured)} queries")
    return results


def short(sql: str) -> str:
    """A query's start and its FROM onwards, shortened: enough to tell the queries apart."""
    if len(sql) <= 160:
        return sql
    tail = sql[sql.find(" FROM ") :] if " FROM " in sql else ""
    return f"{sql[:40]} ...{tail[:120]}{' ...' if len(tail) > 120 else ''}"


def readable(sql: str) -> str:
    """A query as the report shows it: a long IN list of ids cut to its ends."""
    return re.sub(r"IN \((\d+), (?:\d+, )+(\d+)\)", r"IN (\1, ..., \2)", sql)


def explain(sql: str) -> list[str]:
    """The query plan of one captured query (its parameters already inlined)."""
    if db.vendor != "sqlite":
        with db.cursor() as cursor:
            cursor.execute(f"EXPLAIN {sql}")
            return [line for (line,) in cursor.fetchall()]
    with db.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        rows = cursor.fetchall()
    depth: dict[int, int] = {0: 0}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, 0) + 1
        lines.append(f"{'  ' * (depth[node] - 1)}{detail}")
    return lines


def database_name() -> str:
    if db.vendor == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    major, minor = divmod(db.pg_version, 10000)
    return f"PostgreSQL {major}.{minor}"


# Report ---------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, small_runs: int, small: dict[str, Result], large: dict[str, Result]
) -> list[str]:
    lines = [
        f"**Pages: {args.schedules:,} schedules, {small_runs:,} runs vs {args.runs:,} runs "
        f"({database_name()}, django.test.Client, median of {args.repeat} after one warm-up)**",
        "",
        "Small case: "
        + (
            "the timed schedule has a full chart and page of runs, the others one run or none."
            if args.small_layout == "full"
            else "every schedule has one run."
        ),
        "",
        f"| page | ms at {small_runs:,} runs | ms at {args.runs:,} runs | ratio "
        f"| queries ({small_runs:,} / {args.runs:,}) | table rows, run marks drawn "
        f"| target (<= {TARGET_RATIO:.0f}x; dashboard <= {DASHBOARD_TARGET_MS:.0f} ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    missed = []
    for name, before in small.items():
        after = large[name]
        ratio = after.ms / before.ms
        fixed = len(before.queries) == len(after.queries)
        fast = name not in DASHBOARD_PAGES or after.ms <= DASHBOARD_TARGET_MS
        met = ratio <= TARGET_RATIO and fixed and fast
        if not met:
            missed.append(name)
        lines.append(
            f"| {name} | {before.ms:.1f} | {after.ms:.1f} | {ratio:.2f}x "
            f"| {len(before.queries)} / {len(after.queries)}{'' if fixed else ' (grew)'} "
            f"| {before.drawn} / {after.drawn} | {'met' if met else 'NOT MET'} |"
        )
    lines.append("")
    if not missed:
        lines.append(
            f"All pages met the target (<= {TARGET_RATIO:.0f}x, same query count; the "
            f"dashboard's <= {DASHBOARD_TARGET_MS:.0f} ms)."
        )
        return lines
    lines += [f"Pages that miss the target: {', '.join(missed)}.", ""]
    for name in missed:
        queries = large[name].queries
        sql, ms = max(queries, key=lambda query: query[1])
        lines += [
            f"**{name}** ({large[name].ms:.0f} ms at {args.runs:,} runs), its queries, each "
            f"run again to its last row (ms at {small_runs:,} / {args.runs:,} runs):",
            "",
            *(
                f"- {a[1]:.1f} / {b[1]:.1f} ms: `{short(b[0])}`"
                for a, b in zip(small[name].queries, queries, strict=False)
            ),
            f"- the rest (Python, templates, the engine call): about "
            f"{large[name].ms - sum(query[1] for query in queries):.0f} ms",
            "",
            f"The slowest ({ms:.0f} ms):",
            "",
            "```sql",
            readable(sql),
            "```",
            "",
            "Query plan:",
            "",
            "```",
            *explain(sql),
            "```",
            "",
        ]
    return lines


# Main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000, help="default: %(default)s")
    parser.add_argument(
        "--runs", type=int, default=1_000_000, help="runs in all, large case (default: %(default)s)"
    )
    parser.add_argument(
        "--repeat", type=int, default=7, help="timed requests per page (default: %(default)s)"
    )
    parser.add_argument(
        "--small-layout",
        choices=["full", "even"],
        default="full",
        help="the small case's runs: 'full' gives the timed schedule a full chart and page "
        "(%(default)s); 'even' gives every schedule one run",
    )
    args = parser.parse_args()
    if args.schedules < 1 or args.repeat < 1:
        parser.error("--schedules and --repeat must be at least 1")
    if args.runs < args.schedules:
        parser.error("--runs must be at least --schedules (the small case has one per schedule)")

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="cleanups-pages-"))
    try:
        lines = run(args, workdir)
    finally:
        db.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if db.vendor == "postgresql":
            with db._nodb_cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{db.settings_dict["NAME"]}"')
    say(f"done in {time.perf_counter() - started:.0f} s")
    print("\n".join(lines))


def run(args: argparse.Namespace, workdir: Path) -> list[str]:
    setup_test_environment()  # the test client's 'testserver' host is allowed
    db.close()
    if db.vendor == "sqlite":
        db.settings_dict["NAME"] = str(workdir / "pages.sqlite3")
        say(f"database in {workdir}; migrating")
    else:  # a database of its own on the server BENCH_DATABASE_URL names, dropped at the end
        name = f"cleanups_pages_{os.getpid()}"
        with db._nodb_cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        db.settings_dict["NAME"] = name
        say(f"database {name}; migrating")
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_superuser("bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(user)
    now = timezone.now()

    fill_schedules(args.schedules, now)
    full = min(FULL_PAGE, args.schedules, per_schedule(args.runs, args.schedules)[0])
    if args.small_layout == "full":
        # Schedule 1, the one whose pages are timed, has a full chart and page of runs; the
        # rest of the small case's runs are one each for the next schedules.
        def in_small(pk: int, iteration: int) -> bool:
            return (
                iteration <= full if pk == 1 else iteration == 1 and pk <= args.schedules - full + 1
            )
    else:

        def in_small(pk: int, iteration: int) -> bool:
            return iteration == 1  # one run per schedule

    fill_runs(args.schedules, args.runs, now, in_small, want=True)
    analyze()
    small_runs = CleanupRun.objects.count()
    say(f"timing pages at {small_runs:,} runs")
    small = measure(client, args.repeat, f"{small_runs:,} runs")

    say(f"topping up to {args.runs:,} runs")
    fill_runs(args.schedules, args.runs, now, in_small, want=False)
    analyze()
    large_runs = CleanupRun.objects.count()
    if large_runs != args.runs:
        raise SystemExit(f"bench/pages.py: {large_runs:,} runs, expected {args.runs:,}")
    say(f"timing pages at {large_runs:,} runs")
    large = measure(client, args.repeat, f"{large_runs:,} runs")
    return report(args, small_runs, small, large)


if __name__ == "__main__":
    main()
