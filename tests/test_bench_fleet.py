"""bench/fleet.py runs end to end: every iteration of a small fleet happens, on cleanups and on
the bare SDK, and the report has its table and its figures. Timing is only checked for sanity
(present, non-negative, ordered): how fast is the report's business, not the suite's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import run_bench

SCHEDULES, ITERATIONS = 20, 3
ROWS = [
    "bulk start request (s)",
    "engine calls made after (s)",
    "all running after (s)",
    "runs",
    "runs/s",
    "skipped slots",
    "lateness p50 (ms)",
    "lateness p99 (ms)",
    "lateness max (ms)",
    "lateness p50, runs after the first (ms)",
    "lateness p99, runs after the first (ms)",
    "runworker peak RSS (MB)",
    "peak threads",
]


def machine_lines(stdout: str) -> dict[str, Any]:
    found = dict(
        line.split(" ", 1) for line in stdout.splitlines() if line.startswith(("RESULT ", "SETUP "))
    )
    assert found.keys() == {"RESULT", "SETUP"}, stdout
    return {key: json.loads(value) for key, value in found.items()}


def assert_sane(side: dict[str, Any]) -> None:
    """Figures every phase has, whatever the machine's speed."""
    late = side["lateness_ms"]
    assert late["count"] == side["runs"]  # every run of the fleet was planned
    assert 0 <= late["p50"] <= late["p99"] <= late["max"]  # never early
    later = side["later_lateness_ms"]
    assert later["count"] == side["runs"] - SCHEDULES  # all but each one's first
    assert 0 <= later["p50"] <= later["p99"] <= late["max"]
    assert side["bulk_start_request_s"] > 0
    assert side["engine_calls_done_s"] >= 0
    assert side["all_running_after_s"] >= 0
    assert side["runs_per_s"] > 0
    assert side["runworker_peak_rss_mb"] > 0
    assert side["peak_threads"] > 0


@pytest.mark.subprocess
def test_fleet_bench_runs_every_iteration_on_cleanups_and_on_the_bare_sdk(tmp_path):
    result = run_bench(
        "fleet.py",
        *("--schedules", str(SCHEDULES), "--interval", "1", "--iterations", str(ITERATIONS)),
        tmp_path=tmp_path,
        timeout=300,
    )
    stdout = result.stdout
    assert "| | cleanups | bare SDK | cleanups / SDK |" in stdout
    for row in ROWS:
        assert f"| {row} |" in stdout, row
    figures = machine_lines(stdout)
    ours, sdk = figures["RESULT"]["cleanups"], figures["RESULT"]["sdk"]

    # cleanups: every schedule ran its iterations and completed; an iteration whose slot was
    # missed (a loaded machine) is a skipped row, still one of the three.
    assert ours["finished"] and ours["completed"] == SCHEDULES, stdout
    assert ours["iterations"] == SCHEDULES * ITERATIONS, stdout
    assert ours["runs"] + ours["skipped_rows"] == SCHEDULES * ITERATIONS
    assert ours["succeeded"] == ours["runs"]
    assert ours["skipped_slots"] >= ours["skipped_rows"]
    assert_sane(ours)

    # The bare SDK, at the same load: every run, nothing to skip.
    assert sdk is not None, stdout
    assert sdk["finished"] and sdk["completed"] == SCHEDULES, stdout
    assert sdk["runs"] == SCHEDULES * ITERATIONS
    assert_sane(sdk)
    ratios = figures["RESULT"]["ratio"]
    assert ratios["lateness_p99"] > 0 and ratios["peak_threads"] > 0

    assert figures["SETUP"]["schedules"] == SCHEDULES
    assert list(tmp_path.iterdir()) == []  # the temporary directory and database are gone
