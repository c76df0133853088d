"""A batch never waits long for a lock someone else holds (CLEANUP_LOCK_TIMEOUT_MS): it gives
up, the run waits holding nothing, tries that batch again, and counts the wait. Against the real
database's locks: another session's, on its own connection."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.utils import timezone

from cleanups.models import CleanupRun
from cleanups.tasks.context import CleanupContext
from cleanups.tasks.locks import CANCELLED, LOCK_WAIT, in_batch_transaction
from tests.conftest import run_iteration
from tests.testapp.models import Event

pytestmark = pytest.mark.django_db(transaction=True)
DAY = timedelta(days=1)
OLD_ROWS = {"model": "testapp.Event", "field": "created_at", "older_than_days": 30}
HOLD_SECONDS = 1.5


def time_ago(days: int) -> datetime:
    return timezone.now() - days * DAY


class Holder(threading.Thread):
    """Another session: takes a lock (SQLite: the write lock; PostgreSQL: ``LOCK TABLE ... IN
    SHARE MODE`` on the events, which lets reads through and holds writes back, as a long
    report or an index build does) once ``go`` is set, keeps it HOLD_SECONDS, lets go."""

    def __init__(self, when: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.go = when or threading.Event()
        self.holding = threading.Event()
        self.released_at = 0.0

    def run(self) -> None:
        self.go.wait(30)
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    if connection.vendor == "postgresql":
                        table = Event._meta.db_table
                        cursor.execute(f'LOCK TABLE "{table}" IN SHARE MODE')
                    else:  # BEGIN IMMEDIATE took the write lock; make it a real write
                        cursor.execute(f"UPDATE {Event._meta.db_table} SET id = id WHERE 0")
                self.holding.set()
                time.sleep(HOLD_SECONDS)
            self.released_at = time.monotonic()
        finally:
            connections.close_all()


def test_a_batch_that_meets_a_lock_gives_up_waits_holding_nothing_and_goes_again(settings):
    settings.CLEANUP_LOCK_TIMEOUT_MS = 200
    Event.objects.create(created_at=time_ago(40))
    holder = Holder()
    holder.go.set()
    holder.start()
    assert holder.holding.wait(10)
    ctx = CleanupContext({})
    tries = []

    def batch() -> int:
        tries.append(time.monotonic())
        return Event.objects.all().delete()[0]

    began = time.monotonic()
    assert in_batch_transaction(ctx, "default", "testapp.Event", batch) == 1
    holder.join(10)
    # It gave up while the lock was held (SQLite before the batch began: its write lock comes
    # with BEGIN IMMEDIATE), and went once it was free: deleted, once.
    assert tries and tries[-1] >= holder.released_at - 0.05
    assert not Event.objects.exists()
    waited = ctx.held_back[LOCK_WAIT]
    assert HOLD_SECONDS - 0.5 < waited <= time.monotonic() - began + 0.01


def test_without_a_limit_a_lock_error_is_the_databases_own(settings):
    settings.CLEANUP_LOCK_TIMEOUT_MS = 0
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL waits for a lock as long as it is held when there is no limit")
    holder = Holder()
    holder.go.set()
    holder.start()
    assert holder.holding.wait(10)
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 100")
    try:
        with pytest.raises(OperationalError, match="locked"):
            in_batch_transaction(CleanupContext({}), "default", "x", lambda: Event.objects.create())
    finally:
        holder.join(10)
        connections.close_all()


def test_a_run_whose_table_is_locked_waits_then_deletes_and_says_so(make_schedule, settings):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite locks the whole database: every write of the run would wait alike")
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    settings.CLEANUP_LOCK_TIMEOUT_MS = 200
    Event.objects.bulk_create([Event(created_at=time_ago(40)) for _ in range(300)])
    schedule = make_schedule(
        task="delete_old_rows",
        params={**OLD_ROWS, "batch_size": 100},
        interval=timedelta(hours=1),
        max_table_fraction=0,
        desired_state="running",
    )
    holder = Holder()
    holder.go.set()
    holder.start()
    assert holder.holding.wait(10)
    run = run_iteration(schedule, 1)
    holder.join(10)
    assert run.status == CleanupRun.Status.SUCCEEDED
    assert run.items_deleted == 300 and not Event.objects.exists()
    assert run.details["held_back"][LOCK_WAIT] > HOLD_SECONDS - 0.5


def test_a_batch_the_server_cancels_goes_again_smaller_and_says_so(make_schedule, settings):
    # A server (or a role) that gives each statement less time than a batch takes: 300 ms, and
    # each deleted event costs 2 ms (a trigger). The batch of 400 is cancelled, then 200; 100 go.
    if connection.vendor != "postgresql":
        pytest.skip("statement_timeout is PostgreSQL's")
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    Event.objects.bulk_create([Event(created_at=time_ago(40)) for _ in range(400)])
    schedule = make_schedule(
        task="delete_old_rows",
        params={**OLD_ROWS, "batch_size": 400},
        interval=timedelta(hours=1),
        max_table_fraction=0,
        desired_state="running",
    )
    table, database = Event._meta.db_table, connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.002); RETURN OLD; END $$"
        )
        cursor.execute(
            f'CREATE TRIGGER slow_delete BEFORE DELETE ON "{table}" '
            "FOR EACH ROW EXECUTE FUNCTION slow_delete()"
        )
        cursor.execute(f'ALTER DATABASE "{database}" SET statement_timeout = 300')
    _new_connections()  # the setting is read when a session begins
    try:
        run = run_iteration(schedule, 1)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{database}" RESET statement_timeout')
            cursor.execute(f'DROP TRIGGER slow_delete ON "{table}"')
            cursor.execute("DROP FUNCTION slow_delete()")
        _new_connections()
    assert run.status == CleanupRun.Status.SUCCEEDED, run.error
    assert run.items_deleted == 400 and not Event.objects.exists()
    assert run.details["held_back"][CANCELLED] > 0.5  # 400 and 200 rows' worth, at least


def _new_connections() -> None:
    connections.close_all()
    if hasattr(connection, "close_pool"):
        connection.close_pool()
