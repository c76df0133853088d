"""After a big delete: tell the planner (ANALYZE), give the space back where asked (VACUUM),
and record the table's size before and after on the run."""

from __future__ import annotations

import time
from typing import Any

from django.db import DatabaseError, connections, models

from cleanups.conf import settings

# A run that deleted more than this fraction of a table also counts as a big delete.
BIG_FRACTION = 0.10
# Below this many rows no delete is big, whatever fraction of a table it was.
SMALL_DELETE = 1000


def is_big(deleted: int, table_rows: int | None) -> bool:
    """More than CLEANUP_ANALYZE_AFTER_ROWS rows, or more than 10% of the table (0: never)."""
    threshold = int(settings.CLEANUP_ANALYZE_AFTER_ROWS)
    if not threshold or deleted <= SMALL_DELETE:
        return False
    if deleted > threshold:
        return True
    return bool(table_rows) and deleted > BIG_FRACTION * (table_rows or 0)


def before(
    ctx: Any,
    model: type[models.Model],
    db: str,
    count: int | None,
    sizes: dict[str, int] | None,
) -> None:
    """Record the table's size before a deletion that may turn out big (``count`` None: not
    known), once per run."""
    label = model._meta.label
    if "before" in ctx.tables.get(label, {}):
        return
    if count is not None and not is_big(count, (sizes or {}).get(label)):
        return
    if not int(settings.CLEANUP_ANALYZE_AFTER_ROWS):
        return
    ctx.table_noted(label, before=table_bytes(model, db))


def after(ctx: Any, model: type[models.Model], db: str, sizes: dict[str, int] | None) -> None:
    """Once a deleting call has gone through its rows: when the run deleted a big part of the
    table, ANALYZE it (SQLite: PRAGMA optimize), VACUUM it when the schedule asks, and record
    its size now."""
    label = model._meta.label
    deleted = ctx.targets.get(label, {}).get("items", 0)
    known = ctx.tables.get(label, {})
    if deleted <= SMALL_DELETE or known.get("analyzed"):
        return
    rows = (sizes or {}).get(label)
    if rows is None and deleted <= int(settings.CLEANUP_ANALYZE_AFTER_ROWS):
        rows = deleted + model._base_manager.using(db).count()
    if not is_big(deleted, rows):
        return
    connection = connections[db]
    table = connection.ops.quote_name(model._meta.db_table)
    facts: dict[str, Any] = {}
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"ANALYZE {table}")
            else:
                cursor.execute("PRAGMA optimize")
        facts["analyzed"] = True
    except DatabaseError as error:
        facts["analyzed"], facts["analyze_error"] = False, str(error).strip()[:200]
    if getattr(ctx, "vacuum", False):
        facts.update(_vacuum(connection, table))
    facts["maintenance_seconds"] = round(time.monotonic() - started, 3)
    facts["after"] = table_bytes(model, db)
    ctx.table_noted(label, **facts)


def _vacuum(connection: Any, table: str) -> dict[str, Any]:
    """VACUUM (ANALYZE) on PostgreSQL (never FULL: it locks the table for its whole length);
    on SQLite, PRAGMA incremental_vacuum where the database uses incremental auto-vacuum
    (a plain VACUUM would rewrite the whole file)."""
    if connection.in_atomic_block:
        return {"vacuumed": False, "vacuum_skipped": "inside a transaction"}
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"VACUUM (ANALYZE) {table}")
                return {"vacuumed": True}
            cursor.execute("PRAGMA auto_vacuum")
            if cursor.fetchone()[0] != 2:
                return {
                    "vacuumed": False,
                    "vacuum_skipped": "SQLite auto_vacuum is not INCREMENTAL",
                }
            cursor.execute("PRAGMA incremental_vacuum")
            cursor.fetchall()
            return {"vacuumed": True}
    except DatabaseError as error:
        return {"vacuumed": False, "vacuum_error": str(error).strip()[:200]}


def table_bytes(model: type[models.Model], db: str) -> int | None:
    """The space a table takes with its indexes: pg_total_relation_size on PostgreSQL;
    SQLite's dbstat where it is compiled in, otherwise the database file's pages in use."""
    connection = connections[db]
    table = model._meta.db_table
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "SELECT pg_total_relation_size(%s::regclass)",
                    [connection.ops.quote_name(table)],
                )
                return int(cursor.fetchone()[0])
            if connection.vendor != "sqlite":
                return None
            try:
                cursor.execute(
                    "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
                    "(SELECT name FROM sqlite_master WHERE tbl_name = %s)",
                    [table],
                )
                return int(cursor.fetchone()[0] or 0)
            except DatabaseError:  # no dbstat in this SQLite: the file's pages in use
                cursor.execute("PRAGMA page_count")
                pages = cursor.fetchone()[0]
                cursor.execute("PRAGMA freelist_count")
                free = cursor.fetchone()[0]
                cursor.execute("PRAGMA page_size")
                return int((pages - free) * cursor.fetchone()[0])
    except DatabaseError:
        return None
