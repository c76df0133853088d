"""cleanups.tasks.throttle: the lag of a real streaming replica, as replay runs, pauses and
resumes (PostgreSQL), and nothing to know elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from django.utils import timezone

from cleanups.tasks import throttle
from cleanups.tasks.throttle import ReplicaLag, wal_bytes
from tests.replica import StreamingReplica, streaming_replica  # noqa: F401
from tests.testapp.models import Event

on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="replicas are PostgreSQL's (bin/test runs it second)"
)
pytestmark = pytest.mark.django_db(transaction=True)


def write_rows(count: int = 200) -> None:
    """WAL for the replica: one committed transaction of ``count`` rows."""
    now = timezone.now()
    Event.objects.bulk_create([Event(created_at=now, name="replicated") for _ in range(count)])


def poll(
    lag: ReplicaLag,
    until: Callable[[float | None], bool],
    timeout: float,
    writing: bool = True,
) -> list[float | None]:
    """Ask ``lag`` (writing rows in between, if ``writing``) until ``until(seconds)`` holds;
    every answer, the last meeting it. Fails on timeout."""
    seen: list[float | None] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if writing:
            write_rows()
        seen.append(lag.seconds())
        if until(seen[-1]):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"lag never met the condition within {timeout} s; saw {seen}")


def test_elsewhere_nothing_is_known():
    if connection.vendor == "postgresql":
        pytest.skip("SQLite and the other databases: no replicas to ask about")

    assert ReplicaLag().seconds() is None
    assert wal_bytes("default") is None


@on_postgresql
def test_no_replica_connected_is_nothing_known():
    before = wal_bytes("default")
    write_rows()

    assert ReplicaLag().seconds() is None
    assert before is not None and wal_bytes("default") > before


@on_postgresql
def test_a_failing_query_is_nothing_known_and_leaves_the_transaction_usable(monkeypatch):
    lag = ReplicaLag()
    monkeypatch.setattr(throttle, "_REPLICAS_SQL", "SELECT no_such_column FROM pg_stat_replication")

    with transaction.atomic():
        write_rows(1)
        assert lag.seconds() is None
        assert Event.objects.count() == 1


def test_replica_that_keeps_up_is_not_behind(
    streaming_replica: StreamingReplica,  # noqa: F811 (the fixture imported above)
):
    lag = ReplicaLag()
    deadline = time.monotonic() + 3.0
    seen = []
    while time.monotonic() < deadline:
        write_rows()
        seen.append(lag.seconds())

    known = [seconds for seconds in seen if seconds is not None]
    assert known, seen
    assert max(known) < 2.0, seen


def test_paused_replay_grows_the_lag_and_resumed_replay_shrinks_it(
    streaming_replica: StreamingReplica,  # noqa: F811
):
    lag = ReplicaLag()
    poll(lag, lambda seconds: seconds is not None and seconds < 0.5, timeout=15)

    streaming_replica.pause()
    poll(lag, lambda seconds: seconds is not None and seconds > 1.0, timeout=15)
    assert streaming_replica.replay_paused()

    streaming_replica.resume()
    poll(lag, lambda seconds: seconds is not None and seconds < 0.5, timeout=15)


def test_paused_replica_is_further_behind_while_the_primary_writes_nothing(
    streaming_replica: StreamingReplica,  # noqa: F811
):
    """replay_lag stands still between the standby's reports (every 10 s) when no WAL comes:
    the lag must grow all the same."""
    lag = ReplicaLag()
    streaming_replica.pause()
    (*_, behind) = poll(lag, lambda seconds: seconds is not None and seconds > 1.0, timeout=15)

    poll(lag, lambda seconds: seconds is not None and seconds > behind + 1.5, 10, writing=False)
