"""bench/pages.py still runs end to end and prints its table (tiny sizes; no timing checked)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_pages_bench_prints_its_table(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "bench/pages.py", "--schedules", "5", "--runs", "200", "--repeat", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "| page | ms at 5 runs | ms at 200 runs | ratio |" in result.stdout
    for page in (
        "dashboard /",
        "schedule page",
        "schedule run history",
        "schedule run history ?status=failed",
        "all runs",
        "all runs ?status=failed",
        "run page",
        "status.json",
        "admin schedule list",
    ):
        assert f"| {page} |" in result.stdout
    assert list(tmp_path.iterdir()) == []  # the temporary database is gone
