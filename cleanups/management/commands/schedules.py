"""`python manage.py schedules`: list, inspect and control schedules from a shell or a script.

The actions call the admin's control functions, one by one for a few schedules and the bulk way
for many, exactly as the admin's actions do, and print the admin's messages. Whoever has a shell
on the deployment is trusted as its deployer: no permission is checked here (each run is still
checked against its schedule's editor, as always).
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection
from django.db.models import QuerySet
from django.utils import timezone

from cleanups import control
from cleanups.admin import ONE_BY_ONE
from cleanups.control import (
    BulkOutcome,
    ControlOutcome,
    EngineUnavailable,
    Outcome,
    engine_call,
    fetch_runtime_states,
    runtime_status_label,
)
from cleanups.durable.connection import get_client
from cleanups.formatting import human_duration, seconds_label
from cleanups.management.arguments import positive_int
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import all_tasks

EXIT_DONE = 0
EXIT_REFUSED = 1
EXIT_ENGINE_UNREACHABLE = 2
UNREACHABLE = "unreachable"
SHOWN_RUNS = 10

# The schedule is as the action asked, whether this call changed it or found it so already.
_AS_ASKED = frozenset(
    {
        Outcome.STARTED,
        Outcome.ALREADY_RUNNING,
        Outcome.PAUSED,
        Outcome.RESUMED,
        Outcome.RUN_REQUESTED,
        Outcome.TERMINATED,
    }
)


def exit_status(action: str, outcomes: Iterable[Outcome]) -> int:
    """The exit status of an action, from what happened to each schedule.

    2 if the engine could not be reached for any (what was asked is recorded, and runworker
    does it once the engine is back); else 1 if any schedule is not as asked: refused (its
    cadence cannot run) or not in a state the action applies to (pause of a stopped schedule,
    run-now of a paused one); else 0. A repeat is done, not refused: start of a running
    schedule, terminate of a stopped one.
    """
    seen = set(outcomes)
    if Outcome.ENGINE_UNREACHABLE in seen:
        return EXIT_ENGINE_UNREACHABLE
    as_asked = (_AS_ASKED | {Outcome.NOT_RUNNING}) if action == "terminate" else _AS_ASKED
    return EXIT_DONE if seen <= as_asked else EXIT_REFUSED


class OneLineErrorParser(CommandParser):
    """A bad argument is one line on stderr and status 1, not argparse's usage text and
    status 2: 2 tells a script the engine is unreachable."""

    def error(self, message: str) -> NoReturn:
        if not self.called_from_command_line:
            raise CommandError(f"Error: {message}")  # as Django's own, for call_command()
        self.exit(EXIT_REFUSED, f"{self.prog}: error: {_one_line(message)} (see --help)\n")


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


@dataclass(frozen=True)
class Action:
    """One control action: for one schedule, and for many at once (as the admin's)."""

    help: str
    one: Callable[[CleanupSchedule], ControlOutcome]
    many: Callable[[QuerySet[CleanupSchedule]], BulkOutcome]


def actions(user: str) -> dict[str, Action]:
    """The control actions by subcommand; ``user`` is who asked for a run-now."""
    return {
        "start": Action(
            "Start schedules afresh (a paused one resumes).",
            control.start_schedule,
            control.start_schedules,
        ),
        "pause": Action(
            "Pause schedules: each keeps its place.",
            control.pause_schedule,
            control.pause_schedules,
        ),
        "resume": Action(
            "Resume paused schedules (missed slots follow each one's policy).",
            control.resume_schedule,
            control.resume_schedules,
        ),
        "run-now": Action(
            "Run running schedules once now, without moving their next run.",
            lambda schedule: control.run_now(schedule, user),
            lambda queryset: control.run_schedules_now(queryset, user),
        ),
        "restart": Action(
            "Terminate and start afresh (new history, the count going on).",
            control.restart_schedule,
            control.restart_schedules,
        ),
        "terminate": Action(
            "Stop schedules and end their orchestrations.",
            control.terminate_schedule,
            control.terminate_schedules,
        ),
    }


def who_asks() -> str:
    """Recorded on a run-now's run: the shell's user, through this command."""
    try:
        user = getpass.getuser()[:100]
    except (OSError, KeyError):  # no login name: a container's numeric user
        user = ""
    return f"{user} (manage.py schedules)" if user else "manage.py schedules"


class Command(BaseCommand):
    help = (
        "List, show and control cleanup schedules with the admin's actions and messages. "
        "Exit status: 0 done (a schedule already as asked counts as done); 1 some schedule "
        "refused or not in a state the action applies to (pause of a stopped one), an unknown "
        "name or task, or a bad argument (then nothing is done); 2 the engine is unreachable "
        "(what was asked is recorded and runworker does it once the engine is back; list and "
        "show still print, with the engine state 'unreachable')."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # Django builds a plain CommandParser for the top level, which prints its usage on an
        # error; ours differs only in error().
        parser.__class__ = OneLineErrorParser
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(
            dest="command", metavar="COMMAND", required=True, parser_class=OneLineErrorParser
        )
        listing = commands.add_parser("list", help="Every schedule with its engine state.")
        listing.add_argument("--json", action="store_true", help="A JSON array of objects.")

        show = commands.add_parser(
            "show", help=f"One schedule: configuration, engine state, last {SHOWN_RUNS} runs."
        )
        show.add_argument("name", metavar="NAME")
        show.add_argument("--json", action="store_true", help="A JSON object.")

        runs = commands.add_parser("runs", help="A schedule's run records, newest first.")
        runs.add_argument("name", metavar="NAME")
        runs.add_argument("--status", choices=CleanupRun.Status.values, help="Only these.")
        runs.add_argument(
            "--limit", type=positive_int, default=20, help="At most this many (default 20)."
        )
        runs.add_argument("--json", action="store_true", help="A JSON array of objects.")

        for name, action in actions("").items():
            sub = commands.add_parser(name, help=action.help, description=action.help)
            which = sub.add_mutually_exclusive_group(required=True)
            # default=[]: argparse counts an empty list other than the default as given.
            which.add_argument(
                "names", metavar="NAME", nargs="*", default=[], help="Schedules by name."
            )
            which.add_argument("--all", action="store_true", help="Every schedule.")
            which.add_argument("--task", metavar="TASK", help="Every schedule of this task.")

    def handle(self, *args: Any, **options: Any) -> None:
        _check_database()
        command = options["command"]
        if command == "list":
            self.list_schedules(as_json=options["json"])
        elif command == "show":
            self.show(_schedule_named(options["name"]), as_json=options["json"])
        elif command == "runs":
            runs = _schedule_named(options["name"]).runs.order_by("-iteration")
            if options["status"]:
                runs = runs.filter(status=options["status"])
            self.list_runs(list(runs[: options["limit"]]), as_json=options["json"])
        else:
            selected = _selection(options["names"], options["all"], options["task"])
            self.act(command, actions(who_asks())[command], selected)

    # --- actions ---------------------------------------------------------------------------

    def act(self, name: str, action: Action, queryset: QuerySet[CleanupSchedule]) -> None:
        """A few schedules: each one's outcome. Many: one statement and one message, the engine
        calls on the bulk pool, waited for here so the command ends when they are made."""
        if queryset.count() <= ONE_BY_ONE:
            outcomes = [self._one(action, schedule) for schedule in queryset]
            if not outcomes:
                self.stdout.write("Nothing to do.")
        else:
            outcomes = self._bulk(name, action, queryset)
        status = exit_status(name, outcomes)
        if status == EXIT_ENGINE_UNREACHABLE:
            raise CommandError(
                "The Durable Task engine is unreachable: what was asked is recorded, and "
                "runworker does it once the engine is back.",
                returncode=status,
            )
        if status == EXIT_REFUSED:
            raise CommandError(
                f"{name}: not every schedule is as asked (see above).", returncode=status
            )

    def _one(self, action: Action, schedule: CleanupSchedule) -> Outcome:
        try:
            done = action.one(schedule)
        except EngineUnavailable:
            self.stdout.write(self.style.WARNING(f"“{schedule}”: engine unreachable."))
            return Outcome.ENGINE_UNREACHABLE
        self.stdout.write(self._styled(done.outcome, done.message))
        return done.outcome

    def _bulk(
        self, name: str, action: Action, queryset: QuerySet[CleanupSchedule]
    ) -> list[Outcome]:
        probe = queryset.first()
        done = action.many(queryset)
        self.stdout.write(
            self.style.WARNING(done.message) if done.refused else self.style.SUCCESS(done.message)
        )
        outcomes = []
        if done.refused:
            outcomes.append(Outcome.REFUSED)
        if done.unchanged:
            outcomes.append(Outcome.ALREADY_RUNNING if name == "start" else Outcome.NOT_RUNNING)
        control.wait_for_bulk_engine_calls()
        # The pool leaves the rest to the reconciler when the engine is away: ask it here.
        if done.changed and probe is not None and _engine_state(probe) == UNREACHABLE:
            outcomes.append(Outcome.ENGINE_UNREACHABLE)
        return outcomes

    def _styled(self, outcome: Outcome, message: str) -> str:
        if outcome is Outcome.ENGINE_UNREACHABLE:
            return self.style.WARNING(message)
        if outcome is Outcome.REFUSED:
            return self.style.ERROR(message)
        return self.style.SUCCESS(message) if outcome in _AS_ASKED else message

    # --- reading ---------------------------------------------------------------------------

    def list_schedules(self, *, as_json: bool) -> None:
        schedules = list(CleanupSchedule.objects.with_last_run().order_by("name"))
        try:
            states = fetch_runtime_states(s.instance_id for s in schedules)
        except EngineUnavailable:
            states = None
        rows = [_listed(s, _engine_label(s, states)) for s in schedules]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
        else:
            self._table(
                ["NAME", "TASK", "CADENCE", "DESIRED", "ENGINE", "LAST RUN", "NEXT RUN"],
                [
                    [
                        row["name"],
                        row["task"] + (" (dry run)" if row["dry_run"] else ""),
                        _cadence(schedule),
                        row["desired_state"],
                        row["engine_state"],
                        _last_run(schedule),
                        _next_run(schedule),
                    ]
                    for row, schedule in zip(rows, schedules, strict=True)
                ],
            )
        if states is None:
            raise _unreachable_while_reading()

    def show(self, schedule: CleanupSchedule, *, as_json: bool) -> None:
        engine_state = _engine_state(schedule)
        runs = list(schedule.runs.order_by("-iteration")[:SHOWN_RUNS])
        shown = {**_configuration(schedule, engine_state), "runs": [_run(r) for r in runs]}
        if as_json:
            self.stdout.write(json.dumps(shown, indent=2))
        else:
            fields = {key: value for key, value in shown.items() if key != "runs"}
            width = max(len(key) for key in fields) + 1
            for key, value in fields.items():
                self.stdout.write(f"{key + ':':<{width}} {_text(value)}")
            self.stdout.write(f"\nLast {SHOWN_RUNS} runs:")
            self._runs_table(runs)
        if engine_state == UNREACHABLE:
            raise _unreachable_while_reading()

    def list_runs(self, runs: list[CleanupRun], *, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps([_run(r) for r in runs], indent=2))
        else:
            self._runs_table(runs)

    def _runs_table(self, runs: list[CleanupRun]) -> None:
        if not runs:
            self.stdout.write("No runs.")
            return
        self._table(
            ["#", "STATUS", "TRIGGER", "STARTED", "DURATION", "DELETED", "MESSAGE"],
            [
                [
                    str(run.iteration),
                    run.status + (" (dry run)" if run.dry_run else ""),
                    run.trigger,
                    _when(run.started_at),
                    seconds_label(run.duration.total_seconds()) if run.duration else "–",
                    f"{run.items_deleted:,}",
                    _first_line(run.error or run.reason or run.message),
                ]
                for run in runs
            ],
        )

    def _table(self, headers: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
        for line in [headers, *rows]:
            cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())


def _check_database() -> None:
    """One readable line, not a traceback, when there is nothing to read yet."""
    try:
        tables = connection.introspection.table_names()
    except DatabaseError as error:
        raise CommandError(f"cannot open the database: {error}") from None
    if CleanupSchedule._meta.db_table not in tables:
        raise CommandError("the database is not migrated: run `python manage.py migrate` first.")


def _unreachable_while_reading() -> CommandError:
    return CommandError(
        "The Durable Task engine is unreachable: engine states are unknown. "
        "Is `python manage.py runworker` running?",
        returncode=EXIT_ENGINE_UNREACHABLE,
    )


# --- selecting schedules -------------------------------------------------------------------


def _schedule_named(name: str) -> CleanupSchedule:
    schedule = CleanupSchedule.objects.filter(name=name).first()
    if schedule is None:
        raise CommandError(f"No schedule is named {name!r}.", returncode=EXIT_REFUSED)
    return schedule


def _selection(names: Sequence[str], every: bool, task: str | None) -> QuerySet[CleanupSchedule]:
    """The schedules named, all, or those of a task. An unknown name or task is refused before
    anything is done: a typo must not leave a fleet half changed."""
    schedules = CleanupSchedule.objects.order_by("name")
    if every:
        return schedules.all()
    if task is not None:
        known = {t.name for t in all_tasks()} | set(
            schedules.values_list("task", flat=True).distinct()
        )
        if task not in known:
            raise CommandError(
                f"No task is named {task!r}; tasks: {', '.join(sorted(known))}.",
                returncode=EXIT_REFUSED,
            )
        return schedules.filter(task=task)
    wanted = list(dict.fromkeys(names))
    found = set(schedules.filter(name__in=wanted).values_list("name", flat=True))
    unknown = [name for name in wanted if name not in found]
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        raise CommandError(
            f"No schedule named {listed}; nothing was done.", returncode=EXIT_REFUSED
        )
    return schedules.filter(name__in=wanted)


# --- what is shown -------------------------------------------------------------------------


def _engine_state(schedule: CleanupSchedule) -> str:
    """The engine's state of one schedule's orchestration as the admin labels it."""
    try:
        with engine_call():
            state = get_client().get_orchestration_state(schedule.instance_id, fetch_payloads=False)
    except EngineUnavailable:
        return UNREACHABLE
    return _engine_label(schedule, {schedule.instance_id: state} if state else {})


def _engine_label(schedule: CleanupSchedule, states: dict[str, Any] | None) -> str:
    if schedule.recovering_since:
        return f"recovering ({_first_line(schedule.last_error)})"
    if states is None:
        return UNREACHABLE
    return runtime_status_label(states.get(schedule.instance_id))


def _listed(schedule: CleanupSchedule, engine_state: str) -> dict[str, Any]:
    """One schedule of `list --json`: these keys, always."""
    return {
        "name": schedule.name,
        "task": schedule.task,
        "dry_run": schedule.dry_run,
        "cadence": schedule.cadence,
        "interval_seconds": schedule.interval.total_seconds(),
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "desired_state": schedule.desired_state,
        "engine_state": engine_state,
        "status_reason": schedule.status_reason,
        "iteration": schedule.current_iteration,
        "last_run_status": getattr(schedule, "last_run_status", None),
        "last_run_started_at": _iso(getattr(schedule, "last_run_started_at", None)),
        "next_run_at": _iso(schedule.upcoming_run_at),
    }


def _configuration(schedule: CleanupSchedule, engine_state: str) -> dict[str, Any]:
    """What `show` tells of a schedule: how it is defined, then how it stands."""
    return {
        "name": schedule.name,
        "task": schedule.task,
        "params": schedule.params,
        "dry_run": schedule.dry_run,
        "cadence": schedule.cadence,
        "interval_seconds": schedule.interval.total_seconds(),
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "start_at": _iso(schedule.start_at),
        "end_at": _iso(schedule.end_at),
        "max_iterations": schedule.max_iterations,
        "missed_runs": schedule.missed_runs,
        "max_retries": schedule.max_retries,
        "max_run_seconds": schedule.run_limit,
        "pause_after_failures": schedule.pause_after_failures,
        "notify_email": schedule.notify_email,
        "changed_by": schedule.changed_by.get_username() if schedule.changed_by else None,
        "desired_state": schedule.desired_state,
        "status_reason": schedule.status_reason,
        "engine_state": engine_state,
        "instance_id": schedule.instance_id,
        "iteration": schedule.current_iteration,
        "start_iteration": schedule.start_iteration,
        "next_run_at": _iso(schedule.upcoming_run_at),
        "consecutive_failures": schedule.consecutive_failures,
        "last_error": schedule.last_error,
    }


def _run(run: CleanupRun) -> dict[str, Any]:
    """One run record for `runs --json` and `show --json`: these keys, always."""
    return {
        "iteration": run.iteration,
        "status": run.status,
        "trigger": run.trigger,
        "triggered_by": run.triggered_by,
        "reason": run.reason,
        "dry_run": run.dry_run,
        "planned_at": _iso(run.planned_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_seconds": run.duration.total_seconds() if run.duration else None,
        "items_deleted": run.items_deleted,
        "attempts": run.attempts,
        "message": run.message,
        "error": run.error,
        "worker": run.worker,
    }


def _cadence(schedule: CleanupSchedule) -> str:
    if schedule.cadence == CleanupSchedule.Cadence.CRON:
        return f"cron {schedule.cron} ({schedule.timezone})"
    kind = "rate" if schedule.cadence == CleanupSchedule.Cadence.FIXED_RATE else "delay"
    return f"every {human_duration(schedule.interval)} ({kind})"


def _last_run(schedule: CleanupSchedule) -> str:
    status = getattr(schedule, "last_run_status", None)
    if not status:
        return "–"
    return f"{status} {_when(schedule.last_run_started_at)}"  # type: ignore[attr-defined]


def _next_run(schedule: CleanupSchedule) -> str:
    if schedule.desired_state == CleanupSchedule.DesiredState.PAUSED:
        return "paused"
    return _when(schedule.upcoming_run_at)


def _when(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "–"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _text(value: object) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return _first_line(str(value)) if isinstance(value, str) else str(value)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:120] if lines else ""
