"""`python manage.py healthcheck [--json]`: the checks of /healthz, for probes that run a command.

Exit status 0 when every check is ok, 1 when any fails; never a traceback (an engine or database
that cannot be reached is a failing check)."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from cleanups.health import FAILING, WARNING, Report, run_checks


class Command(BaseCommand):
    # The checks are what it reports: a system check's failure would be a report of its own.
    requires_system_checks: list[str] = []
    help = (
        "Check the site as GET /healthz does: the database answers, the engine answers, some "
        "runworker's heartbeat is younger than two reconcile intervals, no schedule is "
        "recovering, no run has been running longer than HEALTH_STUCK_SECONDS; and warns (without "
        "failing) of schedules further behind their retention policy than "
        "CLEANUP_BACKLOG_ALERT_SECONDS. Prints each check with its reason; exits 0 if none "
        "fails, 1 if any does."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            help='Print {"status": ..., "checks": {...}, "reasons": {...}} as JSON instead.',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = run_checks()
        finally:
            connections.close_all()
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(reasons=True), indent=2))
        else:
            self.stdout.write(self.table(report))
        self.stdout.flush()
        if not report.ok:
            sys.exit(1)

    def table(self, report: Report) -> str:
        width = max(len(check.name) for check in report.checks)
        styles = {FAILING: self.style.ERROR, WARNING: self.style.WARNING}
        lines = []
        for check in report.checks:
            style = styles.get(check.status, self.style.SUCCESS)  # plain when piped
            status = style(f"{check.status:<7}")
            lines.append(f"{check.name:<{width}}  {status}  {check.reason}")
        lines.append(f"status: {report.status}")
        return "\n".join(lines)
