"""The database goes away and comes back, under a real web process (gunicorn) on a PostgreSQL
server of the test's own: while it is down, pages and the admin answer 503 with a short page
(never a 500) and ``/healthz`` says ``database: failing`` within a second; once it is back, the
very first request is answered (the pool drops the connections the restart broke) and the
health check says ok, without restarting anything."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.pgserver import ThrowawayPostgres, newest_bin_dir
from tests.conftest import ROOT, free_port, wait_until

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(newest_bin_dir() is None, reason="needs a PostgreSQL server installed"),
]
PASSWORD = "a-long-test-password-1"


@pytest.fixture
def postgres() -> Any:
    server = ThrowawayPostgres(crash_safe=True)
    server.start()
    yield server
    server.stop()


class Browser:
    """urllib with a cookie jar: a staff user's session, as a person's browser keeps it."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def get(self, path: str, timeout: float = 10) -> tuple[int, str, float]:
        clock = time.monotonic()
        try:
            with self.opener.open(self.base + path, timeout=timeout) as response:
                return response.status, response.read().decode(), time.monotonic() - clock
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), time.monotonic() - clock

    def log_in(self, username: str) -> None:
        status, page, _ = self.get("/admin/login/")
        assert status == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token
        form = {"csrfmiddlewaretoken": token.group(1), "username": username, "password": PASSWORD}
        request = urllib.request.Request(
            self.base + "/admin/login/?next=/admin/",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Referer": self.base + "/admin/login/"},
        )
        with self.opener.open(request, timeout=10) as response:
            assert response.status == 200 and "/login/" not in response.geturl()


def _health(browser: Browser) -> tuple[int, dict[str, Any], float]:
    status, body, took = browser.get("/healthz")
    return status, json.loads(body), took


def test_the_web_process_answers_503_while_postgres_is_down_and_recovers_alone(postgres, tmp_path):
    import psycopg

    with psycopg.connect(postgres.url("postgres"), autocommit=True) as admin:
        admin.execute("CREATE DATABASE cleanups")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "cleanupsite.settings",
        "ENV_FILE": os.devnull,
        "DEBUG": "false",
        "SECRET_KEY": "a-test-key",
        "STATIC_ROOT": str(tmp_path / "static"),
        "DATABASE_URL": postgres.url("cleanups"),
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
        # A page waits this long for a pooled connection before it answers 503.
        "DATABASE_POOL_TIMEOUT": "3",
        # No engine: the engine check fails whatever the database does; only the database's
        # own check is looked at.
        "ENDPOINT": f"http://127.0.0.1:{free_port()}",
    }
    for command in (
        ["migrate", "-v0"],
        ["createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.com"],
    ):
        subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, timeout=120
        )
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "cleanupsite.wsgi",
            "-b",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        browser = Browser(f"http://127.0.0.1:{port}")

        def answers() -> bool:
            try:
                return browser.get("/admin/login/")[0] == 200
            except OSError:
                return False

        wait_until(answers, timeout=30)
        browser.log_in("ops")
        pages = ["/", "/admin/cleanups/cleanupschedule/"]
        for path in pages:
            assert browser.get(path)[0] == 200
        assert _health(browser)[1]["checks"]["database"] == "ok"

        for mode in ("fast", "immediate"):
            postgres.halt(mode)
            status, health, took = _health(browser)
            assert status == 503 and health["checks"]["database"] == "failing"
            assert took < 1.5, f"/healthz took {took:.2f} s with the database down ({mode})"
            for path in pages:
                status, page, _ = browser.get(path)
                assert status == 503, f"{path} answered {status} with the database down"
                assert "The database is not answering" in page

            postgres.resume()
            # The very first request after the restart is answered: not the one that finds
            # the broken connection.
            for path in pages:
                status, page, _ = browser.get(path)
                assert status == 200, f"{path} answered {status} just after the restart ({mode})"
            assert _health(browser)[1]["checks"]["database"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("meanwhile", ["nothing", "paused", "restarted"])
def test_a_run_whose_connection_is_dropped_waits_for_the_database_and_is_recorded_once(
    make_schedule, meanwhile
):
    """An operator (or a pooler) ends every session of the database while a run executes: the
    activity waits for the database and goes on (the run life cycle is idempotent), where it
    used to fail, and so fail its orchestration, leaving the run ``running`` for ever. A run
    whose schedule was paused while it ran finishes too: its second go used to take it for a
    run not yet begun, and leave its record ``running`` (the fault bench, seed 567619). One
    whose schedule was restarted meanwhile is refused its second go, and ends interrupted: it
    used to stay ``running`` (seed 602869, on SQLite with a full disk)."""
    import threading

    from django.db import connection, connections
    from django.db.models import F
    from django.utils import timezone

    from cleanups.durable.activities import run_cleanup
    from cleanups.models import CleanupRun, CleanupSchedule

    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend: PostgreSQL's")
    schedule = make_schedule(task="sample", params={"seconds": 1.0}, interval=timedelta(hours=1))
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
    outcome: dict[str, Any] = {}
    planned_at = timezone.now().isoformat()  # a scheduled run, due now

    def activity() -> None:
        try:
            given = {"schedule_id": schedule.pk, "iteration": 1, "planned_at": planned_at}
            given["generation"] = schedule.generation
            outcome["result"] = run_cleanup(None, given)
        except Exception as error:  # what the engine would get
            outcome["error"] = error
        finally:
            connections.close_all()

    thread = threading.Thread(target=activity)
    thread.start()
    wait_until(lambda: CleanupRun.objects.filter(schedule=schedule).exists())
    if meanwhile == "paused":  # the admin's pause, for the database (the engine suspends)
        CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="paused")
    if meanwhile == "restarted":  # a newer loop owns the schedule
        CleanupSchedule.objects.filter(pk=schedule.pk).update(generation=F("generation") + 1)
    with connection.cursor() as cursor:  # the run is in its task now: drop every other session
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.rowcount >= 1
    thread.join(60)
    assert "error" not in outcome, outcome
    (run,) = CleanupRun.objects.filter(schedule=schedule)
    if meanwhile == "restarted":
        assert run.status == CleanupRun.Status.INTERRUPTED and not outcome["result"]["continue"]
        assert "restarted or stopped" in run.error
    else:
        assert run.status == CleanupRun.Status.SUCCEEDED and outcome["result"]["continue"]
