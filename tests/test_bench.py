"""The benchmark scripts still run and still check what they delete (tiny sizes; no timing)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_delete_rows_bench_runs_and_verifies_its_deletes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "bench/delete_rows.py", "--rows", "3000", "--parents", "600"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| raw DELETE | 3,000 |" in result.stdout
    assert "| delete_old_rows (default batches) | 3,000 |" in result.stdout
    assert "| delete_old_rows (batch_size 1000) | 3,000 |" in result.stdout
    # 600 parents and their 1,200 children, by every method
    assert result.stdout.count("| 1,800 |") == 4
    assert "[plain]" in result.stdout and "[cascade]" in result.stdout
