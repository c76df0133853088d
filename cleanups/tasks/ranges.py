"""Batches by primary key: spans of an integer key (one range DELETE each, nothing read
first), or key ranges found by reading ahead (any single-column key). Neither reads again
what the batches before it went past, as ``pk IN (SELECT pk ... LIMIT n)`` does on a table
that keeps its deleted rows' index entries until VACUUM (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connections, models
from django.db.models.expressions import RawSQL

BatchDeleter = Callable[[int], "tuple[int, dict[str, int]]"]


def integer_key(model: type[models.Model]) -> bool:
    return model._meta.pk.get_internal_type() in INTEGER_KEYS


INTEGER_KEYS = {
    "AutoField",
    "BigAutoField",
    "SmallAutoField",
    "IntegerField",
    "BigIntegerField",
    "SmallIntegerField",
    "PositiveIntegerField",
    "PositiveBigIntegerField",
    "PositiveSmallIntegerField",
}
# A span of integer keys may grow this wide where matching rows are sparse.
SPAN_MAX = 10_000_000


def span_batches(rows: models.QuerySet[Any]) -> BatchDeleter:
    """Batches by spans of an integer key, without reading the rows first: each batch is one
    ``DELETE ... WHERE <filter> AND pk > a AND pk <= a + size``, from the lowest matching key
    to the highest one there was when the deletion began. A span of ``size`` keys holds at
    most ``size`` rows, and the deleter's clock sizes the spans (sparse stretches grow them).
    Rows that come to match above the highest key wait for the next run."""
    label = rows.model._meta.label
    ends = rows.order_by().aggregate(low=models.Min("pk"), high=models.Max("pk"))
    low, high = ends["low"], ends["high"]
    after = [low - 1 if low is not None else None]

    def delete_span(size: int) -> tuple[int, dict[str, int]]:
        if after[0] is None or after[0] >= high:
            return 0, {}
        upto = min(after[0] + size, high)
        span = rows.filter(pk__gt=after[0], pk__lte=upto)
        deleted = span._raw_delete(span.db)
        after[0] = upto
        return (size if upto < high else 0), {label: deleted}

    delete_span.spans = True  # type: ignore[attr-defined]  (its size is a span of keys)
    return delete_span


# Heap pages a first page batch spans (about a hundred rows each).
PAGES_FIRST = 64


def pages_allowed(rows: models.QuerySet[Any]) -> bool:
    """PostgreSQL 14 and later scan a range of heap pages directly (a TID range scan)."""
    connection = connections[rows.db]
    return connection.vendor == "postgresql" and connection.pg_version >= 140000


def page_batches(rows: models.QuerySet[Any]) -> BatchDeleter:
    """PostgreSQL: batches by spans of the table's heap pages, ``DELETE ... WHERE <filter> AND
    ctid >= '(a,0)' AND ctid < '(b,0)'``, a TID range scan: each batch reads its pages in order,
    as the one big DELETE's sequential scan does, and no index at all. The spans go up to the
    pages the table had when the deletion began; the deleter's clock sizes them. Rows written
    after (new pages, or an old row updated onto one) wait for the next run."""
    label = rows.model._meta.label
    connection = connections[rows.db]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
            [connection.ops.quote_name(rows.model._meta.db_table)],
        )
        pages = int(cursor.fetchone()[0])
    after = [0]

    def delete_pages(size: int) -> tuple[int, dict[str, int]]:
        if after[0] >= pages:
            return 0, {}
        upto = min(after[0] + size, pages)
        inside = RawSQL(
            "ctid >= %s::tid AND ctid < %s::tid",
            (f"({after[0]},0)", f"({upto},0)"),
            output_field=models.BooleanField(),
        )
        span = rows.filter(inside)
        deleted = span._raw_delete(span.db)
        after[0] = upto
        return (size if upto < pages else 0), {label: deleted}

    delete_pages.spans = True  # type: ignore[attr-defined]
    delete_pages.first = PAGES_FIRST  # type: ignore[attr-defined]
    return delete_pages


def keyset_batches(rows: models.QuerySet[Any]) -> BatchDeleter:
    """Batches by key range: the batch's last key is the ``size``-th matching key after the
    previous batch's, and the batch is every matching row in between (one range DELETE)."""
    label = rows.model._meta.label
    after: list[Any] = []  # the last key deleted so far, once there is one

    def delete_batch(size: int) -> tuple[int, dict[str, int]]:
        ahead = rows.filter(pk__gt=after[0]) if after else rows
        last = list(ahead.order_by("pk").values_list("pk", flat=True)[size - 1 : size])
        batch = ahead.filter(pk__lte=last[0]) if last else ahead
        deleted = batch._raw_delete(batch.db)
        if not last:
            return deleted, {label: deleted}  # the rest, fewer than a batch: done
        after[:] = last
        return size, {label: deleted}

    return delete_batch
