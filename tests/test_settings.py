"""Start-up configuration: a missing key stops with one line; SQLite is set up for two writers."""

from __future__ import annotations

import subprocess

import pytest
from django.db import connection

from tests.conftest import manage


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return manage(*args, unset={"SECRET_KEY", "DEBUG"}, **env)


def test_missing_secret_key_with_debug_off_stops_with_one_clear_line():
    result = _manage("check")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "cleanups: SECRET_KEY is not set. Set it in the environment or .env "
        "(or set DEBUG=true for local development)."
    ]


def test_debug_runs_without_a_secret_key():
    result = _manage("check", DEBUG="true")
    assert result.returncode == 0, result.stderr


def test_malformed_endpoint_fails_manage_check(tmp_path):
    result = _manage("check", SECRET_KEY="x", ENDPOINT="localhost:8080")
    assert result.returncode != 0
    assert "cleanups.E001" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.django_db
@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="SQLite's own settings; bin/test runs SQLite first"
)
def test_sqlite_runs_in_wal_mode_with_immediate_transactions():
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] >= 20_000
    assert connection.settings_dict["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
