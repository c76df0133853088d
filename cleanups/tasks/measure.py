"""Measuring a table and what a policy leaves in it: its rows, a sample of what would go, the
retention backlog."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connections, models
from django.utils import timezone

from cleanups.tasks.context import CleanupContext
from cleanups.tasks.holds import held_keys, without_held

# Below this many rows (the planner's estimate) a table is counted: exact, and cheap enough.
ESTIMATE_ABOVE = 1_000_000


def table_rows(model: type[models.Model], db: str) -> int:
    """The rows of ``model``'s table: on PostgreSQL the planner's estimate for a big table (no
    second scan of millions of rows), otherwise counted. An estimate is only as fresh as the
    last ANALYZE: a table that shrank since looks bigger than it is, so the guard's fraction
    rule trusts it only where counting would cost too much."""
    connection = connections[db]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                [connection.ops.quote_name(model._meta.db_table)],
            )
            found = cursor.fetchone()
        if found and found[0] >= ESTIMATE_ABOVE:
            return int(found[0])
    return model._base_manager.using(db).count()


SAMPLE_ROWS = 20


def sample_of(rows: models.QuerySet[Any]) -> list[list[str]]:
    """The first rows (by primary key) a deletion would take: [pk, str()] each."""
    return [[str(row.pk), str(row)[:200]] for row in rows.order_by("pk")[:SAMPLE_ROWS]]


BACKLOG_COUNT_CAP = 1_000_000


def measure_backlog(
    ctx: CleanupContext, queryset: models.QuerySet[Any], field: str, cutoff: Any
) -> None:
    """How far behind its policy the table is, once the run is done: the age past ``cutoff``
    of the oldest row ``queryset`` (the policy's rows) still holds, one MIN() on ``field``, and
    how many are left (counted up to BACKLOG_COUNT_CAP). Rows under a hold do not count: they
    are meant to stay. Recorded as ``ctx.backlog``."""
    rows = without_held(queryset, held_keys(queryset.model, queryset.db)).order_by()
    oldest = rows.aggregate(oldest=models.Min(field))["oldest"]
    if oldest is None:
        ctx.backlog = {"seconds": 0.0, "rows": 0, "capped": False}
        return
    left = rows[: BACKLOG_COUNT_CAP + 1].count()
    if not isinstance(oldest, datetime):  # a DateField: its day began at midnight
        oldest = timezone.make_aware(datetime.combine(oldest, datetime.min.time()))
        cutoff = timezone.make_aware(datetime.combine(cutoff, datetime.min.time()))
    ctx.backlog = {
        "seconds": max((cutoff - oldest).total_seconds(), 0.0),
        "rows": min(left, BACKLOG_COUNT_CAP),
        "capped": left > BACKLOG_COUNT_CAP,
    }
