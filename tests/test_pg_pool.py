"""PostgreSQL connection pooling: the DATABASE_POOL* settings, and activity runs that take their
connection from the pool instead of opening (forking) a new server backend each."""

from __future__ import annotations

import subprocess
import threading
from datetime import timedelta
from typing import Any

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections
from django.db.backends.signals import connection_created

from cleanups.durable.activities import run_cleanup
from cleanups.models import CleanupRun, CleanupSchedule
from cleanupsite import dbpool
from tests.conftest import manage, runs_of, wait_until

POSTGRESQL = "django.db.backends.postgresql"
POOL_VARIABLES = [
    "DATABASE_POOL",
    "DATABASE_POOL_MIN_SIZE",
    "DATABASE_POOL_MAX_SIZE",
    "DATABASE_POOL_TIMEOUT",
]

pooled_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql" or not connection.settings_dict["OPTIONS"].get("pool"),
    reason="PostgreSQL's connection pool (bin/test runs PostgreSQL second, pool on by default)",
)


@pytest.fixture
def pool_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A django-environ Env over an environment without the developer's DATABASE_POOL*;
    calling it with NAME=value pairs sets those."""
    for name in POOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def make(**values: str) -> environ.Env:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return environ.Env()

    return make


# The settings ---------------------------------------------------------------------------------


def test_postgresql_pools_by_default_with_persistent_connections_off(pool_env):
    database = {"ENGINE": POSTGRESQL, "NAME": "cleanups"}

    dbpool.configure(database, pool_env())

    assert database["OPTIONS"]["pool"] == {"min_size": 2, "max_size": 20, "timeout": 10.0}
    assert database["CONN_MAX_AGE"] == 0  # Django's pooling refuses anything else
    assert database["CONN_HEALTH_CHECKS"] is True  # a connection dead while idle is replaced


def test_the_pool_takes_its_sizes_and_timeout_from_the_environment(pool_env):
    env = pool_env(
        DATABASE_POOL="on",
        DATABASE_POOL_MIN_SIZE="0",
        DATABASE_POOL_MAX_SIZE=" 5 ",
        DATABASE_POOL_TIMEOUT="2.5",
    )

    assert dbpool.pool_options(env) == {"min_size": 0, "max_size": 5, "timeout": 2.5}


@pytest.mark.parametrize("off", ["0", "false", "False", "no", "OFF"])
def test_database_pool_off_leaves_postgresql_unpooled(pool_env, off):
    database = {"ENGINE": POSTGRESQL, "NAME": "cleanups", "CONN_MAX_AGE": 60}

    dbpool.configure(database, pool_env(DATABASE_POOL=off, DATABASE_POOL_MAX_SIZE="bogus"))

    assert database == {"ENGINE": POSTGRESQL, "NAME": "cleanups", "CONN_MAX_AGE": 60}


def test_other_engines_are_left_alone_whatever_the_pool_variables_say(pool_env):
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}

    dbpool.configure(database, pool_env(DATABASE_POOL="maybe", DATABASE_POOL_MAX_SIZE="0"))

    assert database == {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"DATABASE_POOL": "maybe"},
            "DATABASE_POOL='maybe' is not a boolean: set it to true or false (default true).",
        ),
        (
            {"DATABASE_POOL_MIN_SIZE": "-1"},
            "DATABASE_POOL_MIN_SIZE='-1' is not a whole number of at least 0 (default 2).",
        ),
        (
            {"DATABASE_POOL_MIN_SIZE": "two"},
            "DATABASE_POOL_MIN_SIZE='two' is not a whole number of at least 0 (default 2).",
        ),
        (
            {"DATABASE_POOL_MAX_SIZE": "0"},
            "DATABASE_POOL_MAX_SIZE='0' is not a whole number of at least 1 (default 20).",
        ),
        (
            {"DATABASE_POOL_MAX_SIZE": ""},
            "DATABASE_POOL_MAX_SIZE='' is not a whole number of at least 1 (default 20).",
        ),
        (
            {"DATABASE_POOL_MAX_SIZE": "2.5"},
            "DATABASE_POOL_MAX_SIZE='2.5' is not a whole number of at least 1 (default 20).",
        ),
        (
            {"DATABASE_POOL_MIN_SIZE": "8", "DATABASE_POOL_MAX_SIZE": "4"},
            "DATABASE_POOL_MIN_SIZE=8 is more than DATABASE_POOL_MAX_SIZE=4.",
        ),
        (
            {"DATABASE_POOL_MIN_SIZE": "21"},
            "DATABASE_POOL_MIN_SIZE=21 is more than DATABASE_POOL_MAX_SIZE=20.",
        ),
        *(
            (
                {"DATABASE_POOL_TIMEOUT": bad},
                f"DATABASE_POOL_TIMEOUT={bad!r} is not a positive number of seconds (default 10).",
            )
            for bad in ["0", "-3", "soon", "nan", "inf", ""]
        ),
    ],
)
def test_a_bad_pool_value_is_refused_naming_its_variable(pool_env, values, message):
    with pytest.raises(ImproperlyConfigured) as refused:
        dbpool.configure({"ENGINE": POSTGRESQL, "NAME": "cleanups"}, pool_env(**values))

    assert str(refused.value) == message


def test_a_pool_with_persistent_connections_is_refused_up_front(pool_env):
    database = {"ENGINE": POSTGRESQL, "NAME": "cleanups", "CONN_MAX_AGE": 60}

    with pytest.raises(ImproperlyConfigured) as refused:
        dbpool.configure(database, pool_env())

    assert str(refused.value) == (
        "DATABASE_URL asks for persistent connections (conn_max_age=60), which a connection "
        "pool replaces: drop conn_max_age from DATABASE_URL, or set DATABASE_POOL=false."
    )


def _settings_process(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """manage.py with the project's own settings on a PostgreSQL DATABASE_URL (nobody listens
    there: reading the settings connects to nothing)."""
    return manage(
        *args,
        unset=POOL_VARIABLES,
        **{
            "SECRET_KEY": "x",
            "DATABASE_URL": "postgres://cleanups@127.0.0.1:9/cleanups",
            **env,
        },
    )


def test_a_bad_pool_value_stops_start_up_with_one_clear_line():
    result = _settings_process("check", DATABASE_POOL_MAX_SIZE="lots")

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "cleanups: DATABASE_POOL_MAX_SIZE='lots' is not a whole number of at least 1 (default 20)."
    ]


def test_the_settings_give_postgresql_the_pool_the_environment_asks_for():
    show = (
        "from django.conf import settings; d = settings.DATABASES['default'];"
        "print(d['OPTIONS'].get('pool'), d['CONN_MAX_AGE'])"
    )

    default = _settings_process("shell", "--no-imports", "-c", show)
    sized = _settings_process("shell", "--no-imports", "-c", show, DATABASE_POOL_MAX_SIZE="7")
    off = _settings_process("shell", "--no-imports", "-c", show, DATABASE_POOL="false")

    assert default.stdout.strip() == "{'min_size': 2, 'max_size': 20, 'timeout': 10.0} 0"
    assert sized.stdout.strip() == "{'min_size': 2, 'max_size': 7, 'timeout': 10.0} 0"
    assert off.stdout.strip() == "None 0"


# The pool at work, on PostgreSQL --------------------------------------------------------------


def _in_a_thread(function: Any, *args: Any) -> Any:
    """Call function on a thread of its own (a new Django connection, as on the worker's
    activity threads), and return what it returned or raise what it raised. The thread closes
    its connections when done, as every thread of the project's does: a pooled connection that
    a finished thread never closed is lost to the pool for good."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as error:
            outcome["error"] = error
        finally:
            connections.close_all()

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the thread did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _server_backends() -> set[int]:
    """The client backends the server runs for the test database, now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend'"
        )
        return {pid for (pid,) in cursor.fetchall()}


@pytest.fixture
def running_schedule(make_schedule):
    schedule = make_schedule(task="sample", params={"seconds": 0}, interval=timedelta(seconds=30))
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
    schedule.refresh_from_db()
    return schedule


@pytest.fixture
def activity_backends() -> Any:
    """The server backend of every Django connection opened meanwhile, in order (the thread's
    connection to the server, which the pool hands out)."""
    pids: list[int] = []

    def opened(sender: Any, connection: Any, **kwargs: Any) -> None:
        pids.append(connection.connection.info.backend_pid)

    connection_created.connect(opened, weak=False, dispatch_uid="test_pg_pool")
    yield pids
    connection_created.disconnect(dispatch_uid="test_pg_pool")


def _run(schedule: CleanupSchedule, iteration: int) -> dict[str, Any]:
    return _in_a_thread(run_cleanup, None, {"schedule_id": schedule.pk, "iteration": iteration})


@pooled_postgresql
@pytest.mark.django_db(transaction=True)
def test_pooled_connections_are_to_the_test_database():
    # pytest-django renames the database to its test database after reading the settings: the
    # pool must connect to that one, never to the database DATABASE_URL names.
    name = connection.settings_dict["NAME"]

    def current_database() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            return cursor.fetchone()[0]

    assert name.startswith("test_")
    assert connection.pool is not None
    assert connection.pool.kwargs["dbname"] == name
    assert _in_a_thread(current_database) == name
    assert current_database() == name


def _checked_out(pool: Any) -> int:
    """The pool's connections out in some thread's hands (the test's own among them)."""
    stats = pool.get_stats()
    return stats["pool_size"] - stats["pool_available"]


@pooled_postgresql
@pytest.mark.django_db(transaction=True)  # the activity closes its thread's connection
def test_activity_runs_take_their_connection_from_the_pool(running_schedule, activity_backends):
    pool = connection.pool
    _run(running_schedule, 1)  # the pool has what one run at a time needs
    backends_before = _server_backends()
    opened_before = pool.get_stats().get("connections_num", 0)
    out_before = _checked_out(pool)

    for iteration in (2, 3, 4):
        assert _run(running_schedule, iteration)["continue"] is True

    assert [run.status for run in runs_of(running_schedule)] == [CleanupRun.Status.SUCCEEDED] * 4
    later_runs = activity_backends[1:]
    assert len(later_runs) == 3
    # No run forked a backend of its own: each took one that was there before, and the pool
    # opened no new connection for them.
    assert set(later_runs) <= backends_before
    assert not _server_backends() - backends_before
    assert pool.get_stats().get("connections_num", 0) == opened_before
    # Each run's close gave its connection back: none stays out with a finished thread.
    assert _checked_out(pool) == out_before


@pooled_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_pooled_connection_that_died_while_idle_costs_no_run(running_schedule, activity_backends):
    pool = connection.pool
    _run(running_schedule, 1)
    waiting = pool.get_stats()["pool_available"]
    assert waiting, "the pool keeps connections between runs"
    # As many runs as connections wait in the pool: the pool hands out each of them in turn.
    for iteration in range(2, waiting + 2):
        _run(running_schedule, iteration)
    pooled = activity_backends[1:]
    # What a server restart or an idle-session timeout does to a connection waiting there.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pooled[0]])
    wait_until(lambda: pooled[0] not in _server_backends())
    lost_before = pool.get_stats().get("connections_lost", 0)

    # One run more than there are connections in the pool: one of them meets the dead one.
    for iteration in range(waiting + 2, 2 * waiting + 3):
        assert _run(running_schedule, iteration)["continue"] is True

    runs = runs_of(running_schedule)
    assert [run.status for run in runs] == [CleanupRun.Status.SUCCEEDED] * (2 * waiting + 2)
    # The dead one was met, found dead by the pool's check, and replaced: no run got it.
    assert pool.get_stats().get("connections_lost", 0) == lost_before + 1
    assert pooled[0] not in activity_backends[waiting + 1 :]


@pooled_postgresql
@pytest.mark.django_db(transaction=True)
def test_concurrent_activity_runs_share_the_pool(make_schedule):
    # As on the worker's activity threads: several runs at once, each closing its connections.
    schedules = [
        make_schedule(task="sample", params={"seconds": 0.2}, interval=timedelta(seconds=30))
        for _ in range(6)
    ]
    CleanupSchedule.objects.update(desired_state="running")
    pool = connection.pool
    out_before = _checked_out(pool)
    results: list[Any] = []

    def run(schedule: CleanupSchedule) -> None:
        # run_cleanup closes its thread's connections itself, as on the worker.
        results.append(run_cleanup(None, {"schedule_id": schedule.pk, "iteration": 1}))

    threads = [threading.Thread(target=run, args=(s,)) for s in schedules]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(results) == 6 and all(result["continue"] for result in results)
    assert CleanupRun.objects.filter(status=CleanupRun.Status.SUCCEEDED).count() == 6
    # Every finished thread's connection went back (one the pool was still opening for a thread
    # that got another meanwhile joins them).
    wait_until(lambda: _checked_out(pool) <= out_before, timeout=5)
    assert pool.get_stats()["pool_size"] <= pool.get_stats()["pool_max"]
