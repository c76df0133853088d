"""Benchmark: every page at 1,000 runs and at 1,000,000 runs (1,000 schedules), SQLite.

    .venv/bin/python bench/pages.py [--schedules 1000] [--runs 1000000] [--repeat 7]

Each page is requested through Django's test client as a logged-in superuser: one warm-up,
then the median of ``--repeat`` requests. The engine is not running, so pages take their
"engine unreachable" path (a refused local connection, well under a millisecond). Target: no
page more than 2x slower at 1M runs than at 1k, and the same number of SQL queries at both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
os.environ.setdefault("EMBEDDED_ENGINE_PORT", "9")  # nothing listens there

import django

django.setup()

from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext, setup_test_environment
from django.urls import reverse
from django.utils import timezone

from cleanups.models import CleanupRun, CleanupSchedule

STATUSES = ["succeeded"] * 8 + ["failed", "skipped"]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fresh_database() -> None:
    path = Path(tempfile.mkdtemp(prefix="cleanups-pages-")) / "pages.sqlite3"
    connection.close()
    connection.settings_dict["NAME"] = str(path)
    call_command("migrate", verbosity=0)


def fill_schedules(count: int) -> list[int]:
    CleanupSchedule.objects.bulk_create(
        CleanupSchedule(
            pk=n,
            name=f"schedule {n:05}",
            task="sample",
            params={"seconds": 0},
            interval=timedelta(minutes=5),
            instance_id=f"cleanup-schedule-{n}",
            desired_state="running" if n % 10 else "paused",
        )
        for n in range(1, count + 1)
    )
    return list(range(1, count + 1))


def fill_runs(schedule_ids: list[int], total: int) -> None:
    """Top the runs up to ``total``, spread evenly over the schedules and the last 60 days."""
    have = CleanupRun.objects.count()
    per_schedule = total // len(schedule_ids)
    now = timezone.now()
    batch: list[CleanupRun] = []
    made = 0
    for sid in schedule_ids:
        start = CleanupRun.objects.filter(schedule_id=sid).count() if have else 0
        for iteration in range(start + 1, per_schedule + 1):
            age = timedelta(
                minutes=(per_schedule - iteration) * 60 * 24 * 60 / max(per_schedule, 1)
            )
            batch.append(
                CleanupRun(
                    schedule_id=sid,
                    iteration=iteration,
                    status=STATUSES[iteration % len(STATUSES)],
                    task="sample",
                    started_at=now - age,
                    finished_at=now - age + timedelta(seconds=2),
                    duration=timedelta(seconds=2),
                    items_deleted=iteration % 50,
                )
            )
            if len(batch) >= 20_000:
                CleanupRun.objects.bulk_create(batch)
                made += len(batch)
                batch = []
                say(f"    {have + made:>9,} / {total:,} runs")
    CleanupRun.objects.bulk_create(batch)


def pages(client: Client) -> dict[str, str]:
    schedule = CleanupSchedule.objects.order_by("pk").first()
    run = CleanupRun.objects.filter(schedule=schedule).order_by("-iteration").first()
    return {
        "dashboard /": reverse("cleanups:dashboard"),
        "dashboard status.json": reverse("cleanups:dashboard_status"),
        "schedule page": reverse("cleanups:schedule_detail", args=[schedule.pk]),
        "schedule runs": reverse("cleanups:schedule_runs", args=[schedule.pk]),
        "schedule runs, failed": reverse("cleanups:schedule_runs", args=[schedule.pk])
        + "?status=failed",
        "all runs": reverse("cleanups:runs"),
        "all runs, failed": reverse("cleanups:runs") + "?status=failed",
        "run page": reverse("cleanups:run_detail", args=[run.pk]),
        "admin schedule list": reverse("admin:cleanups_cleanupschedule_changelist"),
    }


def measure(client: Client, repeat: int) -> dict[str, tuple[float, int]]:
    results = {}
    for name, url in pages(client).items():
        response = client.get(url)
        assert response.status_code == 200, (name, response.status_code)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            client.get(url)
            times.append(time.perf_counter() - started)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        results[name] = (statistics.median(times) * 1000, len(queries))
        say(f"    {name}: {results[name][0]:.1f} ms, {results[name][1]} queries")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    setup_test_environment()
    fresh_database()
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.create_superuser("bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(admin)
    ids = fill_schedules(args.schedules)
    fill_runs(ids, args.schedules)
    say(f"{args.schedules:,} runs:")
    small = measure(client, args.repeat)
    say(f"filling to {args.runs:,} runs")
    fill_runs(ids, args.runs)
    say(f"{args.runs:,} runs:")
    large = measure(client, args.repeat)

    lines = [
        f"**Pages: {args.schedules:,} schedules, {args.schedules:,} runs vs {args.runs:,} runs "
        f"(SQLite, median of {args.repeat})**",
        "",
        "| page | ms at 1k runs | ms at 1M runs | ratio | queries (1k / 1M) | target <= 2x |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, (ms_small, q_small) in small.items():
        ms_large, q_large = large[name]
        ratio = ms_large / ms_small
        ok = ratio <= 2 and q_small == q_large
        lines.append(
            f"| {name} | {ms_small:.1f} | {ms_large:.1f} | {ratio:.2f}x | {q_small} / {q_large} "
            f"| {'met' if ok else 'NOT MET'} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
