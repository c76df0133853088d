"""With DEBUG off, gunicorn serves the pages and WhiteNoise their static files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, database_url, free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.subprocess]


def fetch(url: str) -> tuple[int, str, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode(), dict(response.headers)


def test_gunicorn_with_debug_off_serves_pages_and_static_files(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "cleanupsite.settings",
        "ENV_FILE": os.devnull,
        "DEBUG": "false",
        "SECRET_KEY": "a-test-key",
        "STATIC_ROOT": str(tmp_path / "static"),
        "DATABASE_URL": database_url(),
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "cleanupsite.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def login_page():
            try:
                return fetch(f"{base}/admin/login/")
            except OSError:
                return None

        status, html, _ = wait_until(login_page, timeout=30)
        assert status == 200
        for href in re.findall(r'href="(/static/[^"]+\.css)"', html):
            css_status, css, headers = fetch(base + href)
            assert css_status == 200 and css.strip()
            assert "max-age" in headers.get("Cache-Control", "")
        assert fetch(f"{base}/static/cleanups/cleanups.css")[0] == 200
    finally:
        server.terminate()
        server.wait(timeout=10)
