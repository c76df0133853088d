"""The benchmark scripts still run and still check what they delete (tiny sizes; no timing)."""

from __future__ import annotations

from tests.conftest import run_bench


def test_delete_rows_bench_runs_and_verifies_its_deletes(tmp_path):
    result = run_bench(
        "delete_rows.py", "--rows", "3000", "--parents", "600", tmp_path=tmp_path, timeout=120
    )
    assert "| raw DELETE | 3,000 |" in result.stdout
    assert "| delete_old_rows (default batches) | 3,000 |" in result.stdout
    assert "| delete_old_rows (batch_size 1000) | 3,000 |" in result.stdout
    # 600 parents and their 1,200 children, by every method
    assert result.stdout.count("| 1,800 |") == 4
    assert "[plain]" in result.stdout and "[cascade]" in result.stdout
