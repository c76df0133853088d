"""`python manage.py restorerun RUN_ID [--dry-run] --user USERNAME`: bring back what a run
deleted, from its archive."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.files.storage.handler import InvalidStorageError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cleanups.management.arguments import positive_int
from cleanups.management.commands.schedules import OneLineErrorParser
from cleanups.models import CleanupRun
from cleanups.restoring import RestoreRefused, restore_run


class Command(BaseCommand):
    help = (
        "Restore the rows (and files) a run deleted from its archive: every part's SHA-256 is "
        "verified first (nothing is restored if one differs), then rows load in batches, "
        "parents before children, skipping rows whose primary key exists again. Needs the add "
        "permission of every model restored (files: a superuser). Exit status 1 if refused "
        "or if any row failed."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.__class__ = OneLineErrorParser  # a bad argument: one line, status 1
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", metavar="RUN_ID", type=positive_int)
        parser.add_argument(
            "--dry-run", action="store_true", help="Verify and count; restore nothing."
        )
        parser.add_argument(
            "--user", required=True, metavar="USERNAME", help="Who restores (their rights)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        user = User._default_manager.filter(**{User.USERNAME_FIELD: options["user"]}).first()
        if user is None:
            raise CommandError(f"No user is named {options['user']!r}.")
        run = CleanupRun.objects.select_related("schedule").filter(pk=options["run_id"]).first()
        if run is None:
            raise CommandError(f"No run has the id {options['run_id']}.")
        try:
            done = restore_run(
                run,
                user,
                dry_run=options["dry_run"],
                progress=lambda line: self.stderr.write(line),
            )
        except (RestoreRefused, InvalidStorageError) as refused:
            raise CommandError(str(refused)) from None
        verb = "would be restored" if options["dry_run"] else "restored"
        line = (
            f"Run {run.pk} ({run.schedule}): {done.restored:,} {verb}, "
            f"{done.skipped:,} skipped (there again), {done.failed:,} failed."
        )
        if done.failed:
            raise CommandError(line)
        self.stdout.write(self.style.SUCCESS(line))
