# ruff: noqa: E402 (the environment and django.setup() must come before the project's imports)
"""Fault injection: schedules on three runworker processes sharing one engine, while workers are
killed, the engine is stopped and restarted and operators act; then every guarantee is counted.

    .venv/bin/python bench/faults.py [--seconds 600] [--schedules 50] [--seed N] [--settle 30]
                                     [--database sqlite|postgres] [--database-faults]
                                     [--keep] [--recheck DIR]

(from the project root; it makes its own database, whatever DATABASE_URL or
DJANGO_SETTINGS_MODULE say: SQLite in a new temporary directory, or with ``--database
postgres`` a throwaway PostgreSQL server of its own as the suite's (bench/pgserver.py; every
commit it acknowledges kept, since it may be crashed). It leaves nothing behind unless
``--keep``, which also keeps what the checks read, so that ``--recheck DIR`` can run them again
after a check changed).

``--database-faults`` adds the database's own faults to the repertoire (bench/faultbench/
dbfaults.py): on PostgreSQL the server restarted ``fast`` or ``immediate`` (a crash) for 1 to 4
s, every session of the database ended with ``pg_terminate_backend``, the sessions table locked
``IN SHARE MODE`` for 3 to 6 s (longer than CLEANUP_LOCK_TIMEOUT_MS), the server's
statement_timeout (25 ms) and idle_in_transaction_session_timeout (0.5 s) for 3 to 8 s; on
SQLite the write lock held by another connection past the busy timeout (SQLITE_TIMEOUT 3 s
here). Each is a fault
window as an engine fault is, and the operator waits it out. With it come two row-deleting
schedules (``expired_sessions``, batches of 5, every 1 and 2 s) and a feeder that makes 10
sessions every 0.5 s expiring from 3 s ago to 15 s ahead; the invariant ``rows_miscounted``
checks that the runs' counts add up to the rows that went, and that no row went before it
expired. A 503 "Database unavailable" page during a database fault (or up to 5 s after) is
the site's answer, not a 500.

Set-up. Every process reads the project's own settings (``cleanupsite.settings``, DEBUG on, a
bench secret key, no .env) with ``RECONCILE_INTERVAL=1`` and the default missed-run grace (2 s).
``--schedules`` schedules of the built-in ``sample`` task: fast (``{"seconds": 0}``), slow (0.2 to
1.5 s) and failing (``{"seconds": "x"}``: a failed run every time; some with one retry); mostly
fixed delay and fixed rate every 1 to 3 s, a few cron every minute; missed runs ``run_once`` or
``skip``. Three ``manage.py runworker`` processes: one hosts the embedded engine on a free port,
two connect to it with ``ENDPOINT=http://127.0.0.1:<port>`` as they would to the emulator. A
``manage.py runserver`` serves the pages. This process talks to the engine as the web process
does, and makes every operator action through ``cleanups.control``.

For ``--seconds``, at random from the printed seed (the sequence of choices replays; their timing
depends on the machine), three threads act at once:

* faults, one at a time every 2 to 6 s: SIGKILL a connecting worker and start it again after 0
  to 3 s; SIGTERM the engine-hosting worker and start it again (its in-memory engine loses every
  orchestration: the reconciler must start them again from the database); SIGSTOP the
  engine-hosting worker for 0.5 to 3 s, then SIGCONT;
* an operator, every 0.3 to 1.2 s: pause, resume, start (a stopped schedule, sometimes a paused
  one), terminate, restart, bursts of run-now, and edits of the interval and cadence through the
  model, full_clean() and save(), as the admin's change form does;
* a browser: a superuser, logged in through /admin/login/, GETs the dashboard, status.json, run
  lists, schedule pages, run pages and the admin's schedule list.

A sampler reads every schedule's desired state, then the engine's states, twice a second. Then
the system settles: no more faults or actions, all three workers running, at least 10 s, and
until no run begun before settling is still ``running`` and no running schedule is overdue by
more than the grace and slack (at most ``--settle`` s more).

Invariants, each counted; 0 is the only pass. Times are the database's (planned_at, started_at,
finished_at), this process's clock for actions and faults and the workers' log lines (one
machine, one clock). The "record" of a slot is a run row or a ``skipped`` row.

* never early (planned_at): a run with a ``planned_at`` whose started_at is before it. Not
  measurable (and reported so) while CleanupRun has no ``planned_at``.
* never early (derived): where the plan follows from the data, a ``scheduled`` run that started
  before the slot its predecessor planned. The predecessor is the previous record by iteration
  that is not a manual run (a run-now moves nothing); it must have ended by its own execution
  (not running or interrupted; a skipped row only with the ``skip`` policy, whose next run waits
  for the next slot), and no start, pause, resume, restart or terminate of the schedule may fall
  between the two. The slot is computed as activities.py plans it (_plan_next, _next_after_run,
  _handle_missed_slots) with ``cleanups.cadence``: fixed delay, the end plus the interval; fixed
  rate, the next slot after the start on the grid anchored by the schedule's last start (read
  back after each start); cron, the next fire time; after an overrun, at once (``run_once``) or
  the next slot after the end (``skip``). If an edit of interval or cadence fell within 0.5 s of
  the predecessor's end (when the worker planned), the earliest candidate counts.
* every slot ran or is in a skipped row: per schedule, walk its records by iteration (manual runs
  aside) together with its state-changing actions in time order. After each record the next is
  due as above (the latest candidate; an interrupted run counts as ended when it was marked); it
  must start by the due time + the grace + 1 s (the most that may pass between the worker's
  lateness check and the row it writes), or one period more if it is a ``catch_up`` run (one
  missed slot becomes the catch-up run, by the policy); a skipped row covers the gap before it,
  however late it is written. A pause
  or terminate suspends the deadline; a resume (or a start of a paused schedule) sets it to the
  later of its end and the due time; a start from stopped to its end (cron: the next fire time),
  a restart to its end, in both cases past any engine fault that began before it was due (plus
  two reconcile intervals; the worker never records a start's first run as late); an action
  that found the engine unreachable counts from the end of the engine fault that covered it plus
  two reconcile intervals. A deadline that passes before the next action, the next record or the
  end of the bench (settled) is one violation. So gaps the operator made (paused, stopped) do not
  count, and gaps from injected faults do unless the missed-run policy recorded them.
* no iteration twice: two rows with one (schedule, iteration) (the unique constraint forbids it),
  or one (schedule, iteration) executed to its end more than once by the workers' logs (their
  ``run schedule=... iteration=N status=... duration=...`` lines).
* never two at once: two runs of one schedule (skipped rows aside) whose executions overlap. An
  execution spans started_at to finished_at; for a run still running, to the check (unless its
  finished_at is set: its attempt ended and it waits for a retry); for an interrupted run, whose
  finished_at is when a reconciler marked it, to the death of its worker process or the log line
  of its last attempt's failure, whichever is known and first.
* no run left running: a run begun before settling that is still ``running`` after it.
* no running schedule without an orchestration: in the samples, a schedule whose desired state
  is running while the engine has no live orchestration for it (none, completed, failed,
  terminated) for more than two reconcile intervals (first to last such sample). Samples that
  overlap an engine fault (from the signal until the restarted worker says it started, or
  SIGCONT) or an action on that schedule do not count, and end a streak.
* no orchestration for a stopped schedule: after settling, a stopped schedule whose orchestration
  is live.
* operator actions' outcomes: after settling, each schedule as its last action left it:
  terminate, stopped and not live; start, resume, restart, running and live but not suspended;
  pause, paused and suspended (or with no orchestration: nothing runs). The desired state the actions lead to is replayed from what each
  action does (pause and resume change nothing on a stopped or not paused schedule).
* no HTTP 500: a page that answered 5xx, or an operator action that raised (in the admin, a 500).

Stdout: the seed first, then the Markdown report with up to five examples per invariant (each
with the faults near it), then ``VIOLATIONS {json}`` (null: not measurable) and ``SUMMARY {json}``.
Progress every 10 s on stderr. Exit status 1 when any invariant has a violation, 2 when the bench
itself failed (a worker would not start).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The database is chosen before the bench's environment is set up (on its first import).
_early = argparse.ArgumentParser(add_help=False)
_early.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
os.environ["FAULTS_DATABASE"] = _early.parse_known_args()[0].database

# bench.faultbench sets up the environment and Django when first imported (its __init__);
# django.db's connections are lazy, so importing them first is harmless.
from django.db import connections

from bench.faultbench.driver import run
from bench.faultbench.environment import MIN_SETTLE, WORKDIR
from bench.faultbench.processes import BenchError, say
from bench.faultbench.record import Bench
from bench.faultbench.report import recheck


def positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return number


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Kill, stop and restart workers and the engine while operators act on "
        "schedules, then count every guarantee's violations (0 is the only pass)."
    )
    parser.add_argument(
        "--seconds", type=positive, default=600, help="faults for this long (%(default)s)"
    )
    parser.add_argument("--schedules", type=int, default=50, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument(
        "--settle",
        type=positive,
        default=30,
        help=f"at most this long after the first {MIN_SETTLE:.0f} s for runs begun before "
        "settling to end (%(default)s)",
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="SQLite in a temporary directory, or a throwaway PostgreSQL server (%(default)s)",
    )
    parser.add_argument(
        "--database-faults",
        action="store_true",
        help="the database's faults too (restarts, dropped connections, held locks), and "
        "row-deleting schedules whose counts are checked against the rows that went",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the database, the logs, actions.jsonl and what the checks read",
    )
    parser.add_argument(
        "--recheck",
        type=Path,
        metavar="DIR",
        help="only run the checks again on the directory a --keep run kept",
    )
    keep = False
    try:
        args = parser.parse_args()
        keep = args.keep
        if args.recheck:
            return recheck(args.recheck)
        if args.schedules < 1:
            parser.error("--schedules must be at least 1")
        seed = args.seed if args.seed is not None else random.randrange(1_000_000)
        print(
            f"seed {seed} (replay: .venv/bin/python bench/faults.py --seconds {args.seconds:g} "
            f"--schedules {args.schedules} --settle {args.settle:g} --database {args.database}"
            f"{' --database-faults' if args.database_faults else ''} --seed {seed})",
            flush=True,
        )
        say(f"seed {seed}")
        bench = Bench(args, seed)
        try:
            return run(bench)
        except BenchError as error:
            say(f"bench/faults.py: {error}")
            return 2
        finally:
            for child in [bench.web, *bench.workers]:
                child.stop(timeout=10)
    finally:
        connections.close_all()
        if keep:
            say(f"kept: {WORKDIR}")
        else:
            shutil.rmtree(WORKDIR, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
