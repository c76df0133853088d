"""How far the streaming replicas of a PostgreSQL primary are behind, so that a cleanup can hold
back between delete batches instead of flooding them with WAL (CLEANUP_MAX_REPLICA_LAG_SECONDS).

PostgreSQL's own ``replay_lag`` is not enough on its own. The primary measures it when a standby
reports its position, so it moves only when the standby talks. Seen on PostgreSQL 15 with a real
standby (tests/replica.py) whose replay was paused with ``pg_wal_replay_pause()``: while the
primary kept writing, it grew with every report (the standby reports on each receipt of WAL);
once the writes stopped it stood still between the reports the standby makes every
``wal_receiver_status_interval`` (10 s), going 3.2 s, 11.4 s, 21.4 s in steps; after
``pg_wal_replay_resume()`` the standby had replayed everything within half a second, yet
``replay_lag`` still said 18.4 s for another 11 s (the lag of the last records it replayed),
then NULL. So the WAL a replica has not replayed yet (``pg_current_wal_lsn()`` minus its
``replay_lsn``) is measured too and turned into time, and a replica that has replayed all the
primary wrote is not behind, whatever ``replay_lag`` still says.
"""

from __future__ import annotations

import time
from collections import deque
from typing import NamedTuple

from django.db import DatabaseError, connections, transaction

# The WAL rate is measured over about this long (s) ...
RATE_WINDOW_SECONDS = 60.0
# ... and only once the samples span at least this long, so that one burst of WAL between two
# calls a few milliseconds apart does not pass for the rate.
MIN_RATE_SPAN_SECONDS = 1.0
# At most one sample is kept per this long (s): a caller may ask between every batch.
SAMPLE_EVERY_SECONDS = 1.0

# The primary's WAL position once (MATERIALIZED: pg_current_wal_lsn() is volatile, and every
# replica must be compared with the same position), with a row per replica that replays WAL, or
# one row of NULLs when there is none (pg_basebackup and pg_receivewal report no replay_lsn).
_REPLICAS_SQL = """
WITH wal AS MATERIALIZED (SELECT pg_current_wal_lsn() AS lsn)
SELECT pg_wal_lsn_diff(wal.lsn, '0/0')::bigint,
       r.application_name,
       r.pid,
       EXTRACT(EPOCH FROM r.replay_lag)::float8,
       pg_wal_lsn_diff(wal.lsn, r.replay_lsn)::bigint,
       pg_wal_lsn_diff(r.replay_lsn, '0/0')::bigint
FROM wal
LEFT JOIN pg_stat_replication AS r
  ON r.replay_lsn IS NOT NULL AND r.state IN ('streaming', 'catchup')
"""


class _Sample(NamedTuple):
    at: float  # time.monotonic()
    wal_bytes: int


class _Behind(NamedTuple):
    """A replica seen behind at this replay position, first at this time (time.monotonic())."""

    replay_bytes: int
    since: float


def wal_bytes(using: str = "default") -> int | None:
    """The primary's current WAL position in bytes, or None when not PostgreSQL or unreadable."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    try:
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
            return int(cursor.fetchone()[0])
    except DatabaseError:  # a standby ("recovery is in progress"), or no permission
        return None


class ReplicaLag:
    """How far the replicas of one database are behind (PostgreSQL primary; elsewhere: None).

    A replica's lag is the largest of the figures known for it:

    - ``replay_lag`` from ``pg_stat_replication``;
    - its bytes behind ``pg_current_wal_lsn()`` divided by the primary's recent WAL rate: WAL
      bytes per second between the samples of the primary's position this object took (one in
      ``__init__``, at most one a second in ``seconds()``) over the last ~60 s, once they span
      at least 1 s;
    - how long it has been seen behind without its replay position moving: if it was behind at
      position X at an earlier call and is still at X, WAL after X existed back then, so it is
      at least that far behind. This one is what grows while the primary writes nothing and the
      rate is zero; it is a lower bound with the resolution of the calls.

    A replica whose replay position is the primary's current position is 0 s behind. Replicas are
    the walsenders in ``pg_stat_replication`` that report a replay position, in state streaming
    or catchup; the database user needs ``pg_read_all_stats`` (or ``pg_monitor``) to see their
    positions, without it they look absent. One object per run, used from one thread.
    """

    def __init__(self, using: str = "default") -> None:
        self.using = using
        self._samples: deque[_Sample] = deque()
        self._behind: dict[tuple[str, int], _Behind] = {}
        current = wal_bytes(using)
        if current is not None:
            self._samples.append(_Sample(time.monotonic(), current))

    def seconds(self) -> float | None:
        """The worst replica's lag in seconds now, or None when not PostgreSQL, no replica is
        connected, or nothing is known."""
        connection = connections[self.using]
        if connection.vendor != "postgresql":
            return None
        try:
            # A savepoint inside a caller's transaction: a failed query must not break it.
            with transaction.atomic(using=self.using), connection.cursor() as cursor:
                cursor.execute(_REPLICAS_SQL)
                rows = cursor.fetchall()
        except DatabaseError:  # a standby ("recovery is in progress"), or no permission
            return None
        now = time.monotonic()
        rate = self._wal_rate(_Sample(now, int(rows[0][0])))
        lags = []
        seen = set()
        for _, name, pid, replay_lag, bytes_behind, replay_bytes in rows:
            if pid is None:  # the LEFT JOIN's row: no replica
                continue
            key = (name, pid)
            seen.add(key)
            lag = self._replica_lag(
                key, now, rate, replay_lag, int(bytes_behind), int(replay_bytes)
            )
            if lag is not None:
                lags.append(lag)
        for gone in self._behind.keys() - seen:
            del self._behind[gone]
        return max(lags, default=None)

    def _wal_rate(self, current: _Sample) -> float | None:
        """WAL bytes per second up to the current sample, which is kept if the last is old
        enough; None while the samples span too short a time."""
        samples = self._samples
        while len(samples) > 1 and samples[1].at <= current.at - RATE_WINDOW_SECONDS:
            samples.popleft()
        if not samples or current.at - samples[-1].at >= SAMPLE_EVERY_SECONDS:
            samples.append(current)
        oldest = samples[0]
        span = current.at - oldest.at
        if span < MIN_RATE_SPAN_SECONDS:
            return None
        return max(current.wal_bytes - oldest.wal_bytes, 0) / span

    def _replica_lag(
        self,
        key: tuple[str, int],
        now: float,
        rate: float | None,
        replay_lag: float | None,
        bytes_behind: int,
        replay_bytes: int,
    ) -> float | None:
        """One replica's lag from what is known of it (the class docstring), remembering when it
        was first seen behind at its replay position."""
        if bytes_behind <= 0:
            self._behind.pop(key, None)
            return 0.0
        known = [] if replay_lag is None else [replay_lag]
        if rate:
            known.append(bytes_behind / rate)
        behind = self._behind.get(key)
        if behind is not None and behind.replay_bytes == replay_bytes:
            known.append(now - behind.since)
        else:
            self._behind[key] = _Behind(replay_bytes, now)
        return max(known, default=None)
