"""bench/waiting.py runs end to end on a small fleet: every schedule starts, runs once, waits,
is paused and resumed by the admin's select-all actions, and the single starts succeed. Timing
is only checked for sanity; how fast is the report's business, not the suite's."""

from __future__ import annotations

import json

from tests.conftest import run_bench

SCHEDULES = 30


def test_waiting_bench_prints_its_table_and_figures(tmp_path):
    result = run_bench(
        "waiting.py",
        "--schedules",
        str(SCHEDULES),
        "--quiet",
        "1",
        "--singles",
        "3",
        tmp_path=tmp_path,
        timeout=240,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"# {SCHEDULES} waiting schedules, one runworker")
    assert "| admin select all -> Start: the request |" in result.stdout
    figures = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    assert figures["finished"] is True
    assert figures["start_request_s"] > 0
    assert 0 <= figures["all_live_after_s"] <= figures["all_waiting_after_s"]
    assert 0 <= figures["all_running_after_s"] <= figures["all_waiting_after_s"]
    assert 0 < figures["waiting_threads"] <= figures["peak_threads"]
    assert 0 < figures["waiting_rss_mb"] <= figures["peak_rss_mb"]
    for action in ("pause_schedules", "resume_schedules"):
        assert figures[f"{action}_request_s"] > 0
        assert figures[f"{action}_engine_done_s"] >= 0
    assert figures["single_start_ms"]["count"] == 3
    assert 0 < figures["single_start_ms"]["p50"] <= figures["single_start_ms"]["max"]
    assert "not reached" not in result.stdout
