"""Validation of a schedule's definition, as the admin's form, a declaration in code and the
control (before it starts one) check it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError

from cleanups import cadence
from cleanups.log import has_control_characters
from cleanups.tasks.archive import storage_problem
from cleanups.tasks.registry import get_task

MIN_INTERVAL = cadence.MIN_INTERVAL


def _is_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


class ScheduleValidation:
    """Mixed into CleanupSchedule: its ``clean()`` and the checks it is made of."""

    # The model's fields, as this mixin reads them.
    name: str
    task: str
    params: Any
    interval: Any
    cadence: str
    cron: str
    timezone: str
    start_at: datetime | None
    end_at: datetime | None
    max_iterations: int | None
    deletes_as: Any
    archives: bool

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if has_control_characters(self.name or ""):
            # A name is written into log lines and mail subjects: no line breaks to forge them.
            errors.setdefault("name", []).append(
                "The name cannot contain control characters such as a line break."
            )
        task = get_task(self.task)
        if task is None:
            errors.setdefault("task", []).append(
                f"No cleanup task named {self.task!r} is registered."
            )
        else:
            try:
                self.params = task.clean_params(self.params)
            except ValidationError as error:
                errors.setdefault("params", []).extend(error.messages)
            else:
                # Whoever saves it answers for what it deletes (changed_by is set to them first).
                refused = task.refusals(self.params, self.deletes_as)
                if refused:
                    errors.setdefault("params", []).extend(refused)
        if self.interval is not None and self.interval < MIN_INTERVAL:
            errors.setdefault("interval", []).append("The interval must be at least 1 second.")
        try:
            self.clean_cadence()
        except ValidationError as error:
            for field, messages in error.message_dict.items():
                errors.setdefault(field, []).extend(messages)
        if self.max_iterations is not None and self.max_iterations < 1:
            errors.setdefault("max_iterations", []).append(
                "Leave blank to run forever, or give at least 1."
            )
        if self.archives and (problem := storage_problem()):
            errors.setdefault("archive", []).append(problem)
        if errors:
            raise ValidationError(errors)

    def clean_cadence(self) -> None:
        """Check the cadence fields together; raise ValidationError with field errors."""
        errors: dict[str, list[str]] = {}
        if self.cadence == cadence.CRON:
            if not self.cron:
                errors.setdefault("cron", []).append("A cron cadence needs a cron expression.")
            elif not cadence.cron_is_valid(self.cron):
                errors.setdefault("cron", []).append(
                    f'{self.cron!r} is not a valid 5-field cron expression (e.g. "*/15 * * * *").'
                )
        if not _is_timezone(self.timezone):
            errors.setdefault("timezone", []).append(
                f"{self.timezone!r} is not an IANA time zone such as Europe/Berlin."
            )
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            errors.setdefault("end_at", []).append("The end must come after the start.")
        start, end = getattr(self, "window_start", None), getattr(self, "window_end", None)
        if (start is None) != (end is None):
            missing = "window_end" if end is None else "window_start"
            errors.setdefault(missing, []).append(
                "A run window needs both a start and an end (or neither: any time)."
            )
        elif start is not None and start == end:
            errors.setdefault("window_end", []).append(
                "The window must end at another time than it starts (leave both blank to run "
                "at any time)."
            )
        if self.interval is not None and self.interval > cadence.MAX_INTERVAL:
            errors.setdefault("interval", []).append(
                f"The interval can be at most {cadence.MAX_INTERVAL.days} days."
            )
        for field in ("start_at", "end_at"):
            moment = getattr(self, field)
            if moment is not None and moment.year >= cadence.LATEST_YEAR:
                errors.setdefault(field, []).append(
                    f"Give a time before the year {cadence.LATEST_YEAR}."
                )
        uses_interval = self.cadence != cadence.CRON
        # A missing or too short interval is clean()'s error already; say nothing more of it.
        interval_given = self.interval is not None and self.interval >= MIN_INTERVAL
        if not errors and (interval_given or not uses_interval):
            problem = self.next_run_problem()
            if problem:
                errors.setdefault("interval" if uses_interval else "cron", []).append(
                    f"{problem[0].upper()}{problem[1:]}."
                )
        if errors:
            raise ValidationError(errors)

    def next_run_problem(self, moment: datetime | None = None) -> str:
        """Why the next run cannot be computed from ``moment`` (default: now), the way the
        worker computes it; "" when it can."""
        if self.cadence != cadence.CRON and self.interval is None:
            return "cannot compute the next run: there is no interval"
        try:
            cadence.preview_times(self, moment, count=2)
        except (ValueError, TypeError) as error:
            return f"cannot compute the next run: {str(error).rstrip('.')}"
        return ""
