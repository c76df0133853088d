"""Deployment: HTTPS settings from the environment (`check --deploy` passes with them set,
fails without) and bin/run's secrets, private from their first byte."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from cleanupsite.settings import _proxy_ssl_header
from tests.conftest import ROOT, free_port, manage, wait_until

HTTPS = {
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "CSRF_TRUSTED_ORIGINS": "https://cleanups.example.com,https://admin.example.com",
}
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "cleanups.example.com",
}


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """manage.py with the real settings and only the given deployment variables."""
    # The browser tests set DJANGO_ALLOW_ASYNC_UNSAFE for Playwright; a deployment never would.
    unset = {"ALLOWED_HOSTS", "DEBUG", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE", *HTTPS}
    return manage(*args, unset=unset, **env)


def test_deploy_check_passes_with_the_https_settings_from_the_environment():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION, **HTTPS)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_deploy_check_fails_without_them_the_defaults_being_for_the_local_demo():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode != 0
    for warning in ("W004", "W008", "W012", "W016"):  # HSTS, SSL redirect, both cookies
        assert f"security.{warning}" in result.stderr


def test_proxy_ssl_header_is_read_as_a_header_name():
    assert _proxy_ssl_header("X-Forwarded-Proto") == ("HTTP_X_FORWARDED_PROTO", "https")
    assert _proxy_ssl_header("x-forwarded-proto") == ("HTTP_X_FORWARDED_PROTO", "https")
    assert _proxy_ssl_header("") is None


@pytest.mark.parametrize("header", ["HTTP_X_FORWARDED_PROTO", "X-Forwarded-Proto: https"])
def test_an_invalid_proxy_ssl_header_stops_at_start_up_with_one_clear_line(header):
    result = _manage("check", **PRODUCTION, SECURE_PROXY_SSL_HEADER=header)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"cleanups: SECURE_PROXY_SSL_HEADER={header!r} is not a header name. Set it to the "
        "header your proxy sets to https, e.g. SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto."
    ]


# bin/run's secrets: private files from their first byte, the password shown once -------------


def _project_copy(tmp_path: Path) -> Path:
    """The project in a directory of its own (its own .local and database), on this virtualenv."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("bin", "cleanups", "cleanupsite"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "manage.py", project)
    requirements = sorted(ROOT.glob("requirements*.txt"))
    for path in requirements:
        shutil.copy2(path, project)
    # The running virtualenv, entry by entry, with bin/_env.sh's stamp of its own so that
    # bin/run installs nothing (and never touches the real virtualenv's stamps).
    venv = project / ".venv"
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if not entry.name.startswith("."):
            (venv / entry.name).symlink_to(entry)
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in requirements)).hexdigest()
    (venv / ".installed-requirements.txt").write_text(digest + "\n")
    return project


def _run_until_serving(project: Path) -> str:
    """Start bin/run (umask 022, as on most machines), stop it once it serves; its output."""
    unset = {"DATABASE_URL", "DJANGO_SETTINGS_MODULE", "ENDPOINT", "ENV_FILE", "ADMIN_USERNAME"}
    unset |= {"ADMIN_PASSWORD", "ALLOWED_HOSTS", "DEBUG", "SECRET_KEY", *HTTPS}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(HOST="127.0.0.1", PORT=str(free_port()), EMBEDDED_ENGINE_PORT=str(free_port()))
    process = subprocess.Popen(
        ["bash", "-c", "umask 022; exec bin/run"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: (
                any("cleanups is running" in line for line in lines) or process.poll() is not None
            ),
            timeout=120,
        )
        assert process.poll() is None, "".join(lines)
    finally:
        process.terminate()  # bin/run's trap stops the worker and web server it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=10)
    return "".join(lines)


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="bin/run needs the virtualenv")
def test_bin_run_writes_its_secrets_0600_and_prints_the_password_only_when_it_creates_the_login(
    tmp_path,
):
    project = _project_copy(tmp_path)
    first = _run_until_serving(project)
    secret_key, password_file = (
        project / ".local" / "secret-key",
        project / ".local" / "admin-password",
    )
    assert stat.S_IMODE(secret_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert f"Created admin login: admin / {password}" in first

    key = secret_key.read_text()
    second = _run_until_serving(project)
    assert password not in second
    assert f"Admin login: admin (password in {password_file})" in second
    assert secret_key.read_text() == key  # reused, not made again


@pytest.fixture
def no_admin_env(monkeypatch):
    monkeypatch.delenv("ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)


def _ensureadmin(password_file: Path) -> str:
    out = io.StringIO()
    call_command("ensureadmin", password_file=str(password_file), stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_ensureadmin_creates_the_password_file_private_not_chmod_ed_after(
    tmp_path, monkeypatch, no_admin_env
):
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)  # Path.chmod too
    umask = os.umask(0o022)
    try:
        _ensureadmin(tmp_path / "admin-password")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "admin-password").stat().st_mode) == 0o600


@pytest.mark.django_db
def test_ensureadmin_shows_a_password_once_and_never_one_from_the_environment(
    tmp_path, monkeypatch, no_admin_env
):
    password_file = tmp_path / "admin-password"
    first = _ensureadmin(password_file)
    password = password_file.read_text().strip()
    assert first.strip() == f"Created admin login: admin / {password}"
    assert (
        _ensureadmin(password_file).strip() == f"Admin login: admin (password in {password_file})"
    )

    monkeypatch.setenv("ADMIN_PASSWORD", "a-password-from-the-environment")
    changed = _ensureadmin(password_file)
    assert changed.strip() == "Admin login: admin (password set from ADMIN_PASSWORD)"
    assert "a-password-from-the-environment" not in changed + _ensureadmin(password_file)
    assert authenticate(username="admin", password="a-password-from-the-environment")
