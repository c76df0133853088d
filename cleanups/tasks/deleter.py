"""The batch deleter: every row a task deletes goes through ``delete_in_batches``."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from django.db import connections, models
from django.db.models.deletion import (
    CASCADE,
    DO_NOTHING,
    Collector,
    get_candidate_relations_to_delete,
)

from cleanups.tasks import maintenance
from cleanups.tasks.archive import columns, lines_of, plain_fields
from cleanups.tasks.context import CleanupContext
from cleanups.tasks.holds import held_keys, without_held
from cleanups.tasks.locks import in_smaller_batches
from cleanups.tasks.measure import sample_of, table_rows
from cleanups.tasks.ranges import (
    SPAN_MAX,
    integer_key,
    keyset_batches,
    page_batches,
    pages_allowed,
    span_batches,
)

# With no batch size given, batches grow or shrink to take about this long: long enough that
# per-batch costs vanish, far below what would keep another writer waiting noticeably.
AUTO_BATCH_SECONDS = 0.05
AUTO_BATCH_FIRST, AUTO_BATCH_MIN, AUTO_BATCH_MAX = 1000, 100, 100_000

BatchDeleter = Callable[[int], "tuple[int, dict[str, int]]"]


def delete_in_batches(
    ctx: CleanupContext,
    queryset: models.QuerySet[Any],
    batch_size: int | None = None,
    *,
    oldest_first: str | None = None,
    keyset: bool | None = None,
) -> None:
    """Delete what ``queryset`` matches, one batch per short transaction.

    Each batch goes the cheapest way that is still correct:
    - nothing depends on the rows: by primary-key range (keyset: ``DELETE ... WHERE <filter>
      AND pk > last AND pk <= next``, ``next`` the batch's last key in key order), so no batch
      reads again what the batches before it went past; ``keyset=False`` (or a table without a
      single-column key) deletes ``WHERE pk IN (SELECT pk ... LIMIT n)`` instead;
    - rows cascade to tables that need nothing else (no signals, no further relations): the
      SQL Django's collector would run, without building a model instance per row;
    - anything else (signals, SET_NULL, PROTECT, deeper cascades): Django's collector itself.
    The run record's counts are written in the same transaction as the batch, so a worker
    killed midway leaves both consistent.

    ``batch_size`` fixes the rows per batch; without it the size adapts so that each batch
    takes about AUTO_BATCH_SECONDS.

    Safety, in this order: the model is checked against what the schedule's editor may delete;
    rows under a legal hold (or whose deletion would cascade to held rows) are left alone, the
    holds read again at every batch; a run with a row cap takes at most that many, the oldest
    first (by ``oldest_first``, a date field, then the key; without it by key), and leaves the
    rest to the runs after it; a guarded run counts first and its guard may hold it (nothing
    deleted); an approved run deletes at most what was approved; with an archiver, each
    batch's rows (and what cascades from them) are written to a closed archive part before the
    batch's DELETE commits, and the part is recorded with the batch's counts.

    Kind to the database: after each batch the run's pacer may hold it back (a pause, a rate,
    a lagging replica), a closing window ends it after the batch, and a big deletion is followed
    by ANALYZE (and VACUUM, when the schedule asks) of the table, its size recorded before and
    after (cleanups.tasks.maintenance).
    """
    model, db = queryset.model, queryset.db
    label = model._meta.label
    if ctx.entitlement is not None:
        ctx.entitlement.check(model)
    holds = held_keys(model, db)
    _count_kept(ctx, queryset, holds)
    rows = without_held(queryset, holds)
    if ctx.dry_run:
        ctx.would_delete(label, rows.count())
        return
    cap = ctx.cap_left()
    total = rows.count() if ctx.guard is not None or cap is not None else None
    oldest: models.Q | None = None
    if cap is not None and total is not None and total > cap:
        # A backlog bigger than one run may take: the oldest go now, the rest in the next runs.
        ctx.capped_by_row_cap = True
        if cap == 0:
            return
        oldest, total = _oldest(rows, cap, oldest_first), cap
        rows = rows.filter(oldest)
    sizes = None
    if ctx.guard is not None:
        counts = {target: done.get("items", 0) for target, done in ctx.targets.items()}
        counts[label] = counts.get(label, 0) + (total or 0)
        sizes = {label: table_rows(model, db)}
        ctx.guard(label, counts, sizes, lambda: sample_of(rows))
    maintenance.before(ctx, model, db, total, sizes)
    reasons = [reason for reason, _ in holds]
    plan = sql_cascade_plan(queryset)
    by_range = keyset is not False and _keyset_allowed(ctx, rows, plan)
    delete_batch = _batches(ctx, rows, plan, by_range, batch_size)
    most = SPAN_MAX if getattr(delete_batch, "spans", False) else AUTO_BATCH_MAX
    size = batch_size or getattr(delete_batch, "first", AUTO_BATCH_FIRST)
    while not ctx.out_of_time():
        fresh = held_keys(model, db)
        if [reason for reason, _ in fresh] != reasons:  # a hold came or went: from this batch
            holds, reasons = fresh, [reason for reason, _ in fresh]
            _count_kept(ctx, queryset, holds)
            rows = without_held(queryset, holds)
            if oldest is not None:
                rows = rows.filter(oldest)
            delete_batch = _batches(ctx, rows, plan, by_range, batch_size)
        left = ctx.left_to_delete(label)
        if left is not None and left < size:
            if left == 0:
                ctx.capped = rows.exists()
                break
            size = left
        started = time.monotonic()
        done = in_smaller_batches(
            ctx, db, label, partial(_delete_and_count, ctx, delete_batch), size
        )
        if done is None:
            break  # out of time while a lock was held elsewhere: the next part tries again
        went, (taken, counts) = done
        if went < size:
            size = most = went  # the server cancelled bigger batches
        if taken < size:
            break
        if batch_size is None:
            took = max(time.monotonic() - started, 1e-6)
            scale = min(max(AUTO_BATCH_SECONDS / took, 0.5), 2.0)
            size = int(min(max(size * scale, AUTO_BATCH_MIN), most))
        if ctx.pacer is not None:
            ctx.pacer.after_batch(ctx, counts.get(label, 0))
    if not ctx.unfinished:
        maintenance.after(ctx, model, db, sizes)


def _oldest(rows: models.QuerySet[Any], count: int, field: str | None) -> models.Q:
    """The condition that keeps exactly the ``count`` oldest of ``rows``: by ``field`` then
    key, or by key alone."""
    order = [field, "pk"] if field else ["pk"]
    last = rows.order_by(*order).values_list(*order)[count - 1]
    if field is None:
        return models.Q(pk__lte=last[0])
    return models.Q(**{f"{field}__lt": last[0]}) | models.Q(**{field: last[0], "pk__lte": last[1]})


def _keyset_allowed(
    ctx: CleanupContext, rows: models.QuerySet[Any], plan: list[models.ForeignKey] | None
) -> bool:
    """Range deletes need a single-column key, and the database's fast path: nothing that
    cascades, nothing to archive."""
    opts = rows.model._meta
    if ctx.archive is not None or plan is not None or getattr(opts, "is_composite_pk", False):
        return False
    return Collector(using=rows.db, origin=rows).can_fast_delete(rows)


def _count_kept(ctx: CleanupContext, queryset: models.QuerySet[Any], holds: list[Any]) -> None:
    by_reason: dict[str, list[Any]] = {}
    for reason, keys in holds:
        by_reason.setdefault(reason, []).append(keys)
    for reason, key_sets in by_reason.items():
        matched = models.Q()
        for keys in key_sets:
            matched |= models.Q(pk__in=keys)
        ctx.kept_by_hold(reason, queryset.filter(matched).count())


def _batches(
    ctx: CleanupContext,
    rows: models.QuerySet[Any],
    plan: list[models.ForeignKey] | None,
    by_range: bool,
    batch_size: int | None,
) -> BatchDeleter:
    if ctx.archive is not None:
        return _archived_batches(ctx, rows, plan)
    if by_range:
        if ctx.allowance is None and batch_size is None and pages_allowed(rows):
            return page_batches(rows)
        if ctx.allowance is None and integer_key(rows.model):
            return span_batches(rows)
        return keyset_batches(rows)
    return _sql_cascade_batches(rows, plan) if plan else _collector_batches(rows)


def _collector_batches(queryset: models.QuerySet[Any]) -> BatchDeleter:
    model, db = queryset.model, queryset.db
    pks = queryset.order_by().values("pk")

    def delete_batch(size: int) -> tuple[int, dict[str, int]]:
        batch = model._base_manager.using(db).filter(pk__in=pks[:size])
        _, per_model = batch.delete()
        return per_model.get(model._meta.label, 0), per_model

    return delete_batch


def _delete_and_count(
    ctx: CleanupContext, delete_batch: BatchDeleter, size: int
) -> tuple[int, dict[str, int]]:
    taken, counts = delete_batch(size)
    for target, count in counts.items():
        if count:
            ctx.deleted(target, count)
    return taken, counts


def sql_cascade_plan(queryset: models.QuerySet[Any]) -> list[models.ForeignKey] | None:
    """The foreign keys whose rows a batch deletes first, or None when the collector is needed.

    A plan exists only where Django's collector would itself run nothing but SQL: something
    cascades to the model, but the model has no delete signal listeners, no multi-table parents,
    no generic relations, and every foreign key to it is DO_NOTHING or a CASCADE (to its primary
    key) from a model that can be fast-deleted in turn (no listeners, nothing depending on it).
    """
    model = queryset.model
    opts = model._meta
    collector = Collector(using=queryset.db, origin=queryset)
    if (
        collector.can_fast_delete(queryset)
        or collector._has_signal_listeners(model)
        or opts.proxy
        or opts.concrete_model._meta.parents
        or getattr(opts, "is_composite_pk", False)
        or any(hasattr(field, "bulk_related_objects") for field in opts.private_fields)
    ):
        return None
    plan = []
    for related in get_candidate_relations_to_delete(opts):
        field = related.field
        if field.remote_field.on_delete is DO_NOTHING:
            continue
        dependents = related.related_model._base_manager.using(queryset.db).all()
        if (
            field.remote_field.on_delete is not CASCADE
            or field.target_field != opts.pk
            or not collector.can_fast_delete(dependents, from_field=field)
        ):
            return None
        plan.append(field)
    return plan


def _sql_cascade_batches(
    queryset: models.QuerySet[Any], plan: list[models.ForeignKey]
) -> BatchDeleter:
    model, db = queryset.model, queryset.db
    ids = queryset.order_by().values_list("pk", flat=True)
    chunk = connections[db].features.max_query_params or AUTO_BATCH_MAX
    steps = _cascade_steps(db, model, plan)

    def delete_batch(size: int) -> tuple[int, dict[str, int]]:
        batch = list(ids[:size])
        chunks = [batch[start : start + chunk] for start in range(0, len(batch), chunk)]
        _, counts = _delete_keys(db, steps, chunks, model._meta.label)
        return len(batch), counts

    return delete_batch


def _archived_batches(
    ctx: CleanupContext, rows: models.QuerySet[Any], plan: list[models.ForeignKey] | None
) -> BatchDeleter:
    """Batches whose rows, and every row that goes with them, are written to a closed archive
    part before the DELETE, in the same transaction: the part holds exactly what went, and a
    part that cannot be written rolls the batch back."""
    model, db = rows.model, rows.db
    if plan is None and Collector(using=db, origin=rows).can_fast_delete(rows):
        plan = []  # nothing depends on the rows: deleted by key, as a cascade of nothing
    fields = plain_fields(model)
    dependents = [(field, plain_fields(field.model)) for field in plan or []]
    if plan is not None and fields is not None and all(f for _, f in dependents):
        return _rows_archived_batches(ctx, rows, plan, fields, dependents)
    return _instances_archived_batches(ctx, rows, plan)


def _rows_archived_batches(
    ctx: CleanupContext,
    rows: models.QuerySet[Any],
    plan: list[models.ForeignKey],
    fields: list[Any],
    dependents: list[tuple[models.ForeignKey, Any]],
) -> BatchDeleter:
    """Every table involved written from rows as read (no model instances): each batch's
    rows read once, with their keys, then the rows that cascade from them, then the DELETEs."""
    model, db = rows.model, rows.db
    label = model._meta.label
    connection = connections[db]
    chunk = connection.features.max_query_params or AUTO_BATCH_MAX
    reader = rows.order_by().values_list(*columns(fields))
    steps = _cascade_steps(db, model, plan)
    if connection.vendor == "postgresql":
        # Locked, so that no child row can be added to them before the DELETE.
        reader = reader.select_for_update()

    def delete_batch(size: int) -> tuple[int, dict[str, int]]:
        batch = list(reader[:size])
        if not batch:
            return 0, {}
        keys = [row[0] for row in batch]
        chunks = [keys[start : start + chunk] for start in range(0, len(keys), chunk)]
        texts, count = [lines_of(model, fields, batch)], len(batch)
        for field, child_fields in dependents:
            children = field.model._base_manager.using(db).values_list(*columns(child_fields))
            for part in chunks:
                found = list(children.filter(**{f"{field.attname}__in": part}))
                texts.append(lines_of(field.model, child_fields, found))
                count += len(found)
        ctx.archived(ctx.archive.write_lines(texts, count, label))
        return _delete_keys(db, steps, chunks, label)

    return delete_batch


def _instances_archived_batches(
    ctx: CleanupContext, rows: models.QuerySet[Any], plan: list[models.ForeignKey] | None
) -> BatchDeleter:
    """Through model instances and Django's serializer: a field it must convert itself, or
    (no plan) what only Django's collector deletes correctly."""
    model, db = rows.model, rows.db
    label = model._meta.label
    ids = rows.order_by().values_list("pk", flat=True)
    chunk = connections[db].features.max_query_params or AUTO_BATCH_MAX
    manager = model._base_manager.using(db)
    steps = _cascade_steps(db, model, plan) if plan is not None else []

    def delete_batch(size: int) -> tuple[int, dict[str, int]]:
        keys = list(ids[:size])
        if not keys:
            return 0, {}
        chunks = [keys[start : start + chunk] for start in range(0, len(keys), chunk)]
        if plan is not None:
            # Parents first, then each table that cascades from them; locked (PostgreSQL),
            # so that no child row can be added to them meanwhile.
            groups: list[Any] = [manager.filter(pk__in=part).select_for_update() for part in chunks]
            for field in plan:
                children = field.model._base_manager.using(db)
                groups += [children.filter(**{f"{field.attname}__in": p}) for p in chunks]
            ctx.archived(ctx.archive.write_rows(groups, label))
            return _delete_keys(db, steps, chunks, label)
        collector = Collector(using=db, origin=rows)
        collector.collect(list(manager.filter(pk__in=keys)))
        collector.sort()  # children before parents, as it deletes: the archive the other way
        groups = [
            list(objects)
            for m, objects in reversed(collector.data.items())
            if not m._meta.auto_created
        ]
        groups += [list(qs) for qs in collector.fast_deletes if not qs.model._meta.auto_created]
        ctx.archived(ctx.archive.write_rows(groups, label))
        _, per_model = collector.delete()
        return per_model.get(label, 0), per_model

    return delete_batch


Steps = list[tuple[str, str, str]]


def _cascade_steps(db: str, model: type[models.Model], plan: list[models.ForeignKey]) -> Steps:
    """Every table a batch deletes from, dependents first: (target, table, key column)."""
    quote = connections[db].ops.quote_name
    steps = [
        (field.model._meta.label, quote(field.model._meta.db_table), quote(field.column))
        for field in plan
    ]
    steps.append((model._meta.label, quote(model._meta.db_table), quote(model._meta.pk.column)))
    return steps


def _delete_keys(
    db: str, steps: Steps, chunks: list[list[Any]], label: str
) -> tuple[int, dict[str, int]]:
    counts = dict.fromkeys((step[0] for step in steps), 0)
    with connections[db].cursor() as cursor:
        for keys in chunks:
            marks = ", ".join(["%s"] * len(keys))
            for target, table, column in steps:
                cursor.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", keys)
                counts[target] += cursor.rowcount
    return counts[label], counts
