"""bench/starts_under_load.py runs end to end on a small load: the load runs, every single start
starts, and the figures are from the run records. How fast is the report's business."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, run_bench


def test_starts_under_load_bench_prints_its_table_and_figures(tmp_path):
    result = run_bench(
        "starts_under_load.py",
        *("--load", "10", "--starts", "5", "--iterations", "2", "--settle", "1"),
        tmp_path=tmp_path,
        timeout=240,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "# 5 single starts of schedules every 2 s, beside 10 more (7.5 runs/s"
    )
    figures = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    assert figures["finished"] is True
    assert 0 < figures["start_ms"]["p50"] <= figures["start_ms"]["max"]
    assert figures["loop_s"] * 1000 >= figures["start_ms"]["max"]
    assert figures["runs_per_s"] > 0
    # Every new schedule ran its two iterations (planned from its start on).
    assert figures["new_lateness_ms"]["count"] == 10
    assert figures["load_lateness_ms"]["count"] >= 10
    assert "not reached" not in result.stdout


def test_a_bad_flag_is_one_line_and_exit_status_2():
    result = subprocess.run(
        [sys.executable, "bench/starts_under_load.py", "--load", "-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--load" in result.stderr
