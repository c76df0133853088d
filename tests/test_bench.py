"""The benchmark scripts still run and still check what they delete (tiny sizes; no timing)."""

from __future__ import annotations

import glob
import socket
from pathlib import Path

import pytest

from tests.conftest import run_bench

NEIGHBOUR_COLUMNS = "| neighbour p50 (ms) | neighbour p99 (ms) | neighbour max (ms) |"


def method_rows(out: str, name: str) -> list[str]:
    """The report's table lines for method ``name``."""
    return [line for line in out.splitlines() if line.startswith(f"| {name} | ")]


def task_methods(out: str) -> list[str]:
    """The delete_old_rows methods the report has: with the IN batches beside the default ones
    when the deleter takes a keyset parameter (the header says which)."""
    names = ["delete_old_rows (default batches)", "delete_old_rows (batch_size 1000)"]
    if "'IN batches': delete_in_batches(..., keyset=False)" in out:
        names += [
            "delete_old_rows (IN batches, default batches)",
            "delete_old_rows (IN batches, batch_size 1000)",
        ]
    return names


def assert_delete_rows_report(out: str) -> None:
    """Every method deleted every old row (3,000 plain; 600 parents and their 1,200 children),
    with the neighbour measured beside it, and a verdict on all three targets."""
    assert out.count(NEIGHBOUR_COLUMNS) == 2  # the plain table's and the cascade's
    for name in ["raw DELETE", "QuerySet.delete()", *task_methods(out)]:
        plain, cascade = method_rows(out, name)
        assert plain.startswith(f"| {name} | 3,000 |")
        assert cascade.startswith(f"| {name} | 1,800 |")
        neighbour_p99 = plain.split(" | ")[-2]
        assert float(neighbour_p99.replace(",", "")) > 0  # it wrote while the method ran
    for name in task_methods(out):
        for tag in ("plain", "cascade"):
            (line,) = [line for line in out.splitlines() if line.startswith(f"- [{tag}] {name}:")]
            assert "(target <= 100 ms)" in line and "neighbour p99 " in line
            assert "(target < 50 ms; raw DELETE " in line
            assert line.count("MET") == 3  # each target: MET or NOT MET


def test_delete_rows_bench_runs_and_verifies_its_deletes(tmp_path):
    result = run_bench(
        "delete_rows.py", "--rows", "3000", "--parents", "600", tmp_path=tmp_path, timeout=120
    )
    assert_delete_rows_report(result.stdout)
    assert "(SQLite, WAL, IMMEDIATE)" in result.stdout
    assert ">= 0.9x raw DELETE rows/s on SQLite" in result.stdout


@pytest.mark.skipif(
    not glob.glob("/usr/lib/postgresql/*/bin/initdb"), reason="no PostgreSQL server installed"
)
def test_delete_rows_bench_on_postgres_runs_its_own_server(tmp_path):
    result = run_bench(
        "delete_rows.py",
        "--database",
        "postgres",
        "--rows",
        "3000",
        "--parents",
        "600",
        "--repeat",
        "1",
        tmp_path=tmp_path,
        timeout=180,
    )
    assert_delete_rows_report(result.stdout)
    assert "PostgreSQL " in result.stdout and "durability off" in result.stdout
    assert ">= 0.8x raw DELETE rows/s on PostgreSQL" in result.stdout
    # The server is stopped and its cluster gone; the workspace too.
    port = int(result.stderr.split("on 127.0.0.1:", 1)[1].split()[0])
    cluster = Path(result.stderr.split("cluster in ", 1)[1].split()[0])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert not cluster.exists()
    assert not list(tmp_path.glob("cleanups-bench-*"))


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
