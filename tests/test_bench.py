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


def test_delete_rows_bench_archive_reports_archive_on_off_and_raw(tmp_path):
    result = run_bench(
        "delete_rows.py",
        "--rows",
        "3000",
        "--parents",
        "600",
        "--repeat",
        "1",
        "--archive",
        tmp_path=tmp_path,
        timeout=180,
    )
    out = result.stdout
    # The existing report is still there, then the archive's section.
    assert "| delete_old_rows (default batches) | 3,000 |" in out
    assert "**Archive before delete**" in out and "**Archive targets**" in out
    assert "| vs archive off |" in out and "| archive bytes/row |" in out
    for name in ("default batches", "batch_size 1000"):
        assert f"| delete_old_rows + archive ({name}) | 3,000 |" in out
        assert f"| delete_old_rows + archive ({name}) | 1,800 |" in out
        for tag in ("plain", "cascade"):
            (line,) = [
                line
                for line in out.splitlines()
                if line.startswith(f"- [{tag}] delete_old_rows + archive ({name}):")
            ]
            assert "rows/s (archive off " in line and ", raw DELETE " in line
            assert "x raw DELETE (target >= 0.5x): " in line and "x archive off" in line
            assert "longest transaction " in line and "(target <= 250 ms): " in line
            assert line.count("MET") == 2  # each target: MET or NOT MET
            bytes_per_row = float(line.rsplit("archive ", 1)[1].removesuffix(" bytes/row"))
            assert bytes_per_row > 0
    # Every run's archive was checked against what it deleted (on stderr, with the progress).
    assert result.stderr.count("archive checked: ") == 4
    assert "archive checked: " in result.stderr and ", 3,000 rows, " in result.stderr
    assert ", 1,800 rows, " in result.stderr
    # Nothing left behind: the workspace (and the archive directories in it) is gone.
    assert not list(tmp_path.glob("cleanups-bench-*"))
