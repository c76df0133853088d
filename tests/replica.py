"""A real PostgreSQL streaming standby of the test server, for tests of replica lag.

Use it with ``from tests.replica import streaming_replica  # noqa: F401`` and tests marked
``django_db(transaction=True)``: the standby replays only committed WAL. On SQLite the tests
that ask for it skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import free_port, wait_until

START_SECONDS = 60.0


def server_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, the one bin/_postgres.sh runs."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: [int(part) for part in path.parent.name.split(".") if part.isdigit()],
    )
    return found[-1] if found else None


def as_postgres(*command: str | Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the postgres user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return [*prefix, *map(str, command)]


def primary_conninfo() -> dict[str, Any]:
    """How to reach the test server's maintenance database (replication is cluster-wide)."""
    database = settings.DATABASES["default"]
    return {
        "host": database.get("HOST") or "127.0.0.1",
        "port": int(database.get("PORT") or 5432),
        "user": database.get("USER") or "postgres",
        "password": database.get("PASSWORD") or None,
        "dbname": "postgres",
        "connect_timeout": 10,
    }


def query_one(conninfo: dict[str, Any], sql: str, *params: Any) -> Any:
    """The first column of the first row of one statement, on its own autocommit connection."""
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]


@dataclass
class StreamingReplica:
    """A running standby: ``name`` is its application_name in the primary's pg_stat_replication."""

    port: int
    name: str
    bin_dir: Path
    directory: Path

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def execute(self, sql: str) -> Any:
        """Run one statement on the standby."""
        conninfo = {**primary_conninfo(), "host": "127.0.0.1", "port": self.port, "password": None}
        return query_one(conninfo, sql)

    def primary_state(self) -> str | None:
        """Its state as the primary sees it (``streaming`` once caught up), None when absent."""
        return query_one(
            primary_conninfo(),
            "SELECT state FROM pg_stat_replication WHERE application_name = %s",
            self.name,
        )

    def pause(self) -> None:
        """Pause replay, returning once the standby says it is paused."""
        self.execute("SELECT pg_wal_replay_pause()")
        wait_until(self.replay_paused, timeout=10)

    def resume(self) -> None:
        self.execute("SELECT pg_wal_replay_resume()")

    def replay_paused(self) -> bool:
        """Replay has stopped (not only been asked to)."""
        return self.execute("SELECT pg_get_wal_replay_pause_state()") == "paused"

    def start(self) -> None:
        """Clone the primary and start the standby, returning once it streams."""
        database = primary_conninfo()
        self.run(
            self.bin_dir / "pg_basebackup",
            *("-h", database["host"], "-p", database["port"], "-U", database["user"]),
            *("-D", self.data_dir, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
        )
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c hot_standby=on"
            f" -c cluster_name={self.name} -c fsync=off"
        )
        log = self.directory / "log"
        start = ("-D", self.data_dir, "-l", log, "-w", "-t", int(START_SECONDS), "-o", options)
        try:
            self.run(self.bin_dir / "pg_ctl", *start, "-s", "start")
        except subprocess.CalledProcessError:
            raise AssertionError(f"the standby did not start:\n{log.read_text()}") from None
        wait_until(lambda: self.primary_state() == "streaming", timeout=START_SECONDS)

    def stop(self) -> None:
        """Stop the standby (at once), returning once the primary has seen it go."""
        if (self.data_dir / "postmaster.pid").exists():
            stop = (self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", "immediate", "-s", "stop")
            self.run(*stop, check=False)  # already gone is stopped too
        wait_until(lambda: self.primary_state() is None, timeout=START_SECONDS)

    def run(self, *command: str | Path | int, check: bool = True) -> None:
        """Run a PostgreSQL program as the user the clusters belong to."""
        password = primary_conninfo()["password"]
        subprocess.run(
            as_postgres(*map(str, command)),
            check=check,
            env={**os.environ, "PGPASSWORD": password} if password else None,
            timeout=START_SECONDS,
            stdout=subprocess.DEVNULL,
        )


@pytest.fixture
def streaming_replica() -> Iterator[StreamingReplica]:
    """A real streaming standby of the test server, replaying, on a free port."""
    if connection.vendor != "postgresql":
        pytest.skip("a streaming replica needs the PostgreSQL test server")
    bin_dir = server_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server programs in /usr/lib/postgresql")
    directory = Path(tempfile.mkdtemp(prefix="cleanups-replica-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    port = free_port()
    replica = StreamingReplica(port, f"cleanups_replica_{port}", bin_dir, directory)
    try:
        replica.start()
        yield replica
    finally:
        try:
            replica.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
