"""A throwaway PostgreSQL server for a benchmark, started and stopped as bin/_postgres.sh does.

Its own cluster in a new temporary directory (initdb ``-A trust``), on a free loopback port,
with durability off (``fsync``, ``synchronous_commit`` and ``full_page_writes`` off, as in the
test suite: the data is thrown away, and fsync would be most of its write time). PostgreSQL
refuses to run as root, so as root the cluster belongs to the postgres user (``runuser -u
postgres --``) and lives under /tmp, which that user can reach (a root-only TMPDIR may not be).
The newest installed server is used (``ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1``).
Nothing here imports Django: the port is chosen before Django reads its settings.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

INSTALLED = "/usr/lib/postgresql/*/bin"


def newest_bin_dir() -> Path | None:
    """The bin directory of the newest installed PostgreSQL, or None when none is."""

    def version(path: str) -> list[int]:
        return [int(part) for part in re.findall(r"\d+", path)]

    found = [path for path in glob.glob(INSTALLED) if Path(path, "initdb").exists()]
    return Path(max(found, key=version)) if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ThrowawayPostgres:
    """One cluster: ``start()``, connect as ``postgres`` (trust) to ``port``, ``stop()``.

    The port is picked at construction, so the URL can go into the settings before the server
    runs; ``stop()`` is safe to call at any point, more than once.
    """

    def __init__(self, *, crash_safe: bool = False) -> None:
        bin_dir = newest_bin_dir()
        if bin_dir is None:
            raise SystemExit(
                f"--database postgres needs a PostgreSQL server installed ({INSTALLED}/initdb); "
                "e.g. apt-get install postgresql"
            )
        self.bin_dir = bin_dir
        self.port = free_port()
        self.root: Path | None = None
        self.running = False
        self._options = ""
        # A server that will be crashed (``halt("immediate")``) keeps every commit it
        # acknowledged: synchronous_commit stays on (fsync may stay off: the machine itself
        # does not crash, and the operating system keeps what was written).
        self.crash_safe = crash_safe

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def version(self) -> str:
        out = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True
        )
        found = re.search(r"\(PostgreSQL\) (\S+)", out.stdout)
        return found.group(1) if found else "?"

    def _as_owner(self, *command: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return list(command)

    def start(self) -> None:
        as_root = os.geteuid() == 0
        self.root = Path(
            tempfile.mkdtemp(prefix="cleanups-bench-pg-", dir="/tmp" if as_root else None)
        )
        if as_root:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        self._run(
            "initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
        )
        self._options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
            + ("" if self.crash_safe else " -c synchronous_commit=off")
        )
        self.resume()

    def halt(self, mode: str = "fast") -> None:
        """Stop the server and keep its data (``fast``: a clean shutdown that ends every session;
        ``immediate``: a crash, recovered from at the next start)."""
        assert self.root is not None and mode in ("smart", "fast", "immediate")
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "-s", "stop")
        self.running = False

    def resume(self) -> None:
        """Start the server on its data and port again (after ``halt``)."""
        assert self.root is not None
        data, log = self.root / "data", self.root / "log"
        self.running = True  # from here on, stop() must try: pg_ctl may fail after the fork
        try:
            self._run(
                "pg_ctl", "-D", str(data), "-l", str(log), "-w", "-s", "start", "-o", self._options
            )
        except SystemExit:
            if log.exists():
                print(log.read_text(), file=sys.stderr)
            raise

    def _run(self, program: str, *args: str) -> None:
        command = self._as_owner(str(self.bin_dir / program), *args)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{program} failed ({done.returncode}): {done.stderr.strip()}")

    def stop(self) -> None:
        """Stop the server (immediate: nothing in it is kept) and remove its directory."""
        if self.root is None:
            return
        if self.running:
            command = self._as_owner(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate"
            )
            subprocess.run([*command, "stop"], capture_output=True)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
