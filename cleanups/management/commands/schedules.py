"""`python manage.py schedules`: list, inspect and control schedules from a shell or a script.

The actions call the admin's control functions, one by one for a few schedules and the bulk way
for many, exactly as the admin's actions do, and print the admin's messages. Whoever has a shell
on the deployment is trusted as its deployer: no permission is checked here (each run is still
checked against its schedule's editor, as always).
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection
from django.db.models import QuerySet

from cleanups import control
from cleanups.control import Action, BulkOutcome, Outcome
from cleanups.formatting import seconds_label
from cleanups.instances import EngineUnavailable, fetch_runtime_states
from cleanups.management import showing
from cleanups.management.arguments import positive_int
from cleanups.management.showing import UNREACHABLE
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import all_tasks

EXIT_DONE = 0
EXIT_REFUSED = 1
EXIT_ENGINE_UNREACHABLE = 2
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

        for name, verb in (("approve", "Approve"), ("reject", "Reject")):
            what = (
                "it runs now, deleting at most what it showed"
                if name == "approve"
                else "its schedule is paused"
            )
            decide = commands.add_parser(
                name,
                help=f"{verb} a held run ({what}), with the admin's checks for --user.",
            )
            decide.add_argument("run_id", metavar="RUN_ID", type=positive_int)
            decide.add_argument(
                "--user",
                required=True,
                metavar="USERNAME",
                help="Who decides: needs cleanups.approve_cleanuprun (and, under "
                "CLEANUP_FOUR_EYES, must not be the schedule's last editor).",
            )

        for name, action in control.actions().items():
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
        elif command in ("approve", "reject"):
            self.decide(command, options["run_id"], options["user"])
        elif command == "runs":
            runs = _schedule_named(options["name"]).runs.order_by("-iteration")
            if options["status"]:
                runs = runs.filter(status=options["status"])
            self.list_runs(list(runs[: options["limit"]]), as_json=options["json"])
        else:
            selected = _selection(options["names"], options["all"], options["task"])
            self.act(command, control.actions(who_asks())[command], selected)

    # --- actions ---------------------------------------------------------------------------

    def decide(self, decision: str, run_id: int, username: str) -> None:
        user = (
            get_user_model()
            ._default_manager.filter(**{get_user_model().USERNAME_FIELD: username})
            .first()
        )
        if user is None:
            raise CommandError(f"No user is named {username!r}.", returncode=EXIT_REFUSED)
        run = CleanupRun.objects.select_related("schedule").filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"No run has the id {run_id}.", returncode=EXIT_REFUSED)
        try:
            message = (control.approve_run if decision == "approve" else control.reject_run)(
                run, user
            )
        except control.DecisionRefused as refused:
            raise CommandError(str(refused), returncode=EXIT_REFUSED) from None
        self.stdout.write(self.style.SUCCESS(message))

    def act(self, name: str, action: Action, queryset: QuerySet[CleanupSchedule]) -> None:
        """A few schedules: each one's outcome. Many: one statement and one message, the engine
        calls on the bulk pool, waited for here so the command ends when they are made."""
        done = control.act(action, queryset)
        if done.bulk is None:
            outcomes = [outcome.outcome for outcome in done.outcomes]
            for outcome in done.outcomes:
                self.stdout.write(self._styled(outcome.outcome, outcome.message))
            if not outcomes:
                self.stdout.write("Nothing to do.")
        else:
            outcomes = self._bulk(name, done.bulk, queryset)
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

    def _bulk(
        self, name: str, done: BulkOutcome, queryset: QuerySet[CleanupSchedule]
    ) -> list[Outcome]:
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
        probe = queryset.first()
        if done.changed and probe is not None and showing.engine_state(probe) == UNREACHABLE:
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
        rows = [showing.listed(s, showing.engine_label(s, states)) for s in schedules]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
        else:
            self._table(
                ["NAME", "TASK", "CADENCE", "DESIRED", "ENGINE", "LAST RUN", "NEXT RUN"],
                [
                    [
                        row["name"],
                        row["task"] + (" (dry run)" if row["dry_run"] else ""),
                        showing.cadence(schedule),
                        row["desired_state"],
                        row["engine_state"],
                        showing.last_run(schedule),
                        showing.next_run(schedule),
                    ]
                    for row, schedule in zip(rows, schedules, strict=True)
                ],
            )
        if states is None:
            raise _unreachable_while_reading()

    def show(self, schedule: CleanupSchedule, *, as_json: bool) -> None:
        engine_state = showing.engine_state(schedule)
        runs = list(schedule.runs.order_by("-iteration")[:SHOWN_RUNS])
        shown = {
            **showing.configuration(schedule, engine_state),
            "runs": [showing.run(r) for r in runs],
        }
        if as_json:
            self.stdout.write(json.dumps(shown, indent=2))
        else:
            fields = {key: value for key, value in shown.items() if key != "runs"}
            width = max(len(key) for key in fields) + 1
            for key, value in fields.items():
                self.stdout.write(f"{key + ':':<{width}} {showing.text(value)}")
            self.stdout.write(f"\nLast {SHOWN_RUNS} runs:")
            self._runs_table(runs)
        if engine_state == UNREACHABLE:
            raise _unreachable_while_reading()

    def list_runs(self, runs: list[CleanupRun], *, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps([showing.run(r) for r in runs], indent=2))
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
                    showing.when(run.started_at),
                    seconds_label(run.duration.total_seconds()) if run.duration else "–",
                    f"{run.items_deleted:,}",
                    showing.first_line(run.error or run.reason or run.message),
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
