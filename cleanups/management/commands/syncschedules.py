"""`python manage.py syncschedules`: make the schedules in the database agree with the code."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from cleanups import control, declared
from cleanups.conf import settings
from cleanups.management.declarations import refuse_if_invalid

# Exit status: 1 --check found a difference (2, a declaration is invalid: INVALID).
DIFFERS = 1


class Command(BaseCommand):
    help = (
        "Create and update the schedules declared in code (settings.CLEANUP_SCHEDULES and every "
        "installed app's cleanup_schedules module: name -> the admin form's fields, plus state: "
        "running, paused or stopped; default running). A schedule no longer declared is stopped "
        "and handed back to the admin, never deleted: its runs stay. The declared state is "
        "applied when a schedule is created or adopted, and when the declaration's state "
        "changes: an operator's pause or start in the admin outlives syncs until then. A "
        "definition change applies to a running schedule from its next iteration, as an admin "
        "edit does. A declaration named like a schedule made in the admin is an error unless "
        "--adopt. Every declaration is validated as the admin's form validates it (as code: "
        "every permission, within CLEANUP_ALLOWED_DIRS, _MODELS and _PROTECTED_FIELDS); one "
        "invalid declaration and nothing is applied (exit status 2). A second run changes "
        "nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print the changes a sync would make, and make none.",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Like --dry-run, and exit with status 1 if the database differs from the code "
            "(for CI and deploy pipelines); 0 if it matches.",
        )
        parser.add_argument(
            "--adopt",
            action="store_true",
            help="Take over schedules made in the admin whose names the code declares: they "
            "are managed in code from now on, their definition replaced by the declaration's. "
            "Without it such a name is an error.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._handle(**options)
        except DatabaseError as error:
            raise CommandError(
                f"cannot read or write the schedules: {error} (is the database migrated?)"
            ) from None

    def _handle(self, **options: Any) -> None:
        if options["check"] or options["dry_run"]:
            plan = declared.plan(adopt=options["adopt"])
            self._refuse_if_invalid(plan.problems)
            for line in plan.lines():
                self.stdout.write(line)
            self.stdout.write(plan.summary(applied=False))
            if options["check"] and plan.changes:
                raise CommandError(
                    "the database differs from the declared schedules; run "
                    "`python manage.py syncschedules`.",
                    returncode=DIFFERS,
                )
            return
        try:
            result = declared.sync(adopt=options["adopt"])
        except declared.DeclarationError as error:
            self._refuse_if_invalid(error.problems)
            raise
        for line in result.plan.lines():
            self.stdout.write(line)
        for warning in result.warnings:
            self.stderr.write(f"warning: {warning}")
        self.stdout.write(result.plan.summary(applied=True))
        if result.plan.changes:
            # The engine calls of the starts, pauses and stops, made on a pool: let them finish
            # (an engine that is away: the worker's reconciler acts on the desired state).
            wait = max(10.0, 4 * float(settings.ENGINE_CALL_TIMEOUT))
            if not control.wait_for_bulk_engine_calls(timeout=wait):
                self.stderr.write(
                    "warning: the engine has not answered every call yet; the worker's "
                    "reconciler makes it agree with the database."
                )

    def _refuse_if_invalid(self, problems: list[str]) -> None:
        refuse_if_invalid(problems, self.stderr.write)
