"""bench/pages.py still runs end to end and prints its table (tiny sizes; no timing checked)."""

from __future__ import annotations

from tests.conftest import run_bench


def test_pages_bench_prints_its_table(tmp_path):
    result = run_bench(
        "pages.py",
        "--schedules",
        "5",
        "--runs",
        "200",
        "--repeat",
        "1",
        tmp_path=tmp_path,
        timeout=60,
    )
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
        "status.json ?since=",
        "admin schedule list",
    ):
        assert f"| {page} |" in result.stdout
    assert list(tmp_path.iterdir()) == []  # the temporary database is gone
