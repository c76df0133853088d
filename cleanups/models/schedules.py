"""The schedule: what operators (or code) define, and the state the control and runs write."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings as django_settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils.timezone import now as utc_now

from cleanups import cadence
from cleanups.access import DeployedCode
from cleanups.conf import settings
from cleanups.contract import INSTANCE_ID_PREFIX
from cleanups.models.schedule_queries import ScheduleQuerySet
from cleanups.models.validation import ScheduleValidation
from cleanups.tasks.registry import task_choices


def _default_timezone() -> str:
    return django_settings.TIME_ZONE


MIN_INTERVAL = cadence.MIN_INTERVAL


class CleanupSchedule(ScheduleValidation, models.Model):
    """One recurring cleanup; while running it is one eternal `periodic_cleanup` orchestration."""

    class DesiredState(models.TextChoices):
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        STOPPED = "stopped", "Stopped"

    class Cadence(models.TextChoices):
        FIXED_DELAY = cadence.FIXED_DELAY, "Fixed delay (wait the interval after each run ends)"
        FIXED_RATE = cadence.FIXED_RATE, "Fixed rate (start on a grid: start + k × interval)"
        CRON = cadence.CRON, "Cron expression"

    class MissedRuns(models.TextChoices):
        RUN_ONCE = "run_once", "Run once to catch up, then back on the grid"
        SKIP = "skip", "Skip to the next slot"

    name = models.CharField(max_length=100, unique=True)
    task = models.CharField(
        max_length=100,
        choices=task_choices,
        default="expired_sessions",
        help_text="Which cleanup to run.",
    )
    params = models.JSONField(
        default=dict,
        blank=True,
        help_text='Parameters for the task as a JSON object, e.g. {"seconds": 5} for sample.',
    )
    cadence = models.CharField(max_length=12, choices=Cadence.choices, default=Cadence.FIXED_DELAY)
    interval = models.DurationField(
        validators=[MinValueValidator(MIN_INTERVAL)],
        help_text="Fixed delay: the time between the end of one run and the start of the next. "
        "Fixed rate: the grid's step. At least 1 second, e.g. 00:05:00 for five minutes.",
    )
    cron = models.CharField(
        max_length=100,
        blank=True,
        help_text='Cron cadence: a standard 5-field expression, e.g. "30 2 * * *" (02:30 daily).',
    )
    timezone = models.CharField(
        max_length=64,
        default=_default_timezone,
        help_text="The IANA time zone a cron expression and a run window are read in.",
    )
    start_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="No run before this time (and the fixed-rate grid's anchor).",
    )
    end_at = models.DateTimeField(
        null=True, blank=True, help_text="The schedule completes after this time."
    )
    missed_runs = models.CharField(
        max_length=10,
        choices=MissedRuns.choices,
        default=MissedRuns.RUN_ONCE,
        help_text="What to do with slots missed while the worker was down, paused, or a run overran.",
    )
    max_retries = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(10)],
        help_text="Retry a failed cleanup this many times (with backoff) before the run counts as failed.",
    )
    pause_after_failures = models.PositiveIntegerField(
        default=0, help_text="Pause the schedule after this many failed runs in a row (0: never)."
    )
    notify_email = models.EmailField(
        blank=True,
        help_text="Where to send a failure notice (once per streak). Blank: the site's ADMINS.",
    )
    alert_webhooks = models.JSONField(
        default=list,
        blank=True,
        help_text="Webhook URLs, one per line (at most 5), that get a JSON POST when a failure "
        "streak starts, the schedule recovers, it is paused after failures, a stuck run is "
        "restarted or a run times out (Slack and Teams webhooks get their own format). Internal "
        "addresses are refused unless the site's ALERT_WEBHOOK_ALLOWED_HOSTS lists them.",
    )
    dry_run = models.BooleanField(
        default=False,
        help_text="Count what each run would delete, and delete nothing.",
    )
    max_rows_per_run = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="A run deletes at most this many rows, oldest first; a bigger backlog goes "
        "in the runs after it. Blank: the site's CLEANUP_MAX_ROWS_PER_RUN; 0: no limit.",
    )
    max_table_fraction = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="A run that would delete more than this fraction of a table (above 1,000 "
        "rows) is held for approval, e.g. 0.5 for half. Blank: the site's "
        "CLEANUP_MAX_TABLE_FRACTION; 0: no limit.",
    )
    archive = models.BooleanField(
        null=True,
        blank=True,
        help_text="Write the rows (files: move the files) to the archive storage before they "
        "are deleted, so that manage.py restorerun can bring them back. Blank: the site's "
        "CLEANUP_ARCHIVE_BY_DEFAULT.",
    )
    window_start = models.TimeField(
        null=True,
        blank=True,
        help_text="Run only from this wall-clock time (in the schedule's time zone), e.g. "
        "01:00. A run due outside the window waits for it to open; one still deleting when it "
        "closes stops after its batch and the next run goes on. Blank (with window end): any time.",
    )
    window_end = models.TimeField(
        null=True,
        blank=True,
        help_text="Run only until this wall-clock time; before the start means the window "
        "crosses midnight (22:00 to 05:00).",
    )
    max_rows_per_second = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Delete at most this many rows a second, pausing between batches. Blank: no cap.",
    )
    vacuum = models.BooleanField(
        default=False,
        help_text="After a big delete, VACUUM (ANALYZE) the table on PostgreSQL (never VACUUM "
        "FULL) and PRAGMA incremental_vacuum on SQLite with incremental auto-vacuum, so "
        "the space is reused. A big delete is always followed by ANALYZE.",
    )
    max_iterations = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Stop after this many runs of one start. Blank runs forever.",
    )
    max_run_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(366 * 86400)],
        help_text="A run taking longer is recorded as timed out and the schedule goes on. "
        "Blank: the site's CLEANUP_MAX_RUN_SECONDS; 0: no limit.",
    )
    desired_state = models.CharField(
        max_length=10,
        choices=DesiredState.choices,
        default=DesiredState.STOPPED,
        editable=False,
        help_text="What the operator asked for; the worker's reconciler makes the engine agree.",
    )
    instance_id = models.CharField(  # noqa: DJ001 (NULL until the first save knows the pk)
        max_length=100,
        unique=True,
        null=True,
        editable=False,
        help_text="The orchestration instance id, derived from the schedule's primary key.",
    )
    current_iteration = models.PositiveIntegerField(
        default=0, editable=False, help_text="The newest iteration that ran (0: none yet)."
    )
    start_iteration = models.PositiveIntegerField(
        default=1, editable=False, help_text="The first iteration of the current start."
    )
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    anchor_at = models.DateTimeField(
        null=True, editable=False, help_text="The fixed-rate grid's origin: when this start began."
    )
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    failure_notified = models.BooleanField(default=False, editable=False)
    status_reason = models.CharField(
        max_length=300, blank=True, editable=False, help_text="Why the schedule is as it is."
    )
    paused_at = models.DateTimeField(null=True, editable=False)
    resumed_at = models.DateTimeField(null=True, editable=False)
    recovering_since = models.DateTimeField(null=True, editable=False)
    recover_attempts = models.PositiveIntegerField(default=0, editable=False)
    generation = models.PositiveIntegerField(
        default=0,
        editable=False,
        help_text="Bumped by each operator start, restart and terminate, in the same UPDATE as "
        "the desired state; the orchestration carries it, so a superseded one never runs.",
    )
    last_error = models.TextField(blank=True, editable=False)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        help_text="Who last saved it: each run may delete only what this person may delete.",
    )
    managed_by = models.CharField(
        max_length=200,
        blank=True,
        editable=False,
        help_text="Where the schedule is declared in code (settings.CLEANUP_SCHEDULES or an app's "
        "cleanup_schedules module); blank: managed in the admin. Written by syncschedules.",
    )
    declared_state = models.CharField(
        max_length=10,
        blank=True,
        editable=False,
        help_text="The state its declaration asked for at the last syncschedules: a sync applies "
        "the declared state only when it changes, so an operator's pause outlives a sync.",
    )
    backlog_seconds = models.FloatField(
        null=True,
        editable=False,
        help_text="How far behind its retention policy the table is after the last run: the "
        "age of the oldest row it should already have deleted, past the cutoff (0: none).",
    )
    backlog_rows = models.PositiveBigIntegerField(
        null=True,
        editable=False,
        help_text="Rows left that the policy says should be gone (capped).",
    )
    backlog_at = models.DateTimeField(null=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    changed_at = models.DateTimeField(
        default=utc_now,
        db_index=True,
        editable=False,
        help_text="When its desired state, generation or definition last changed (each save, "
        "and each update of those): the reconciler's pass looks at what changed since the last.",
    )

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        self.changed_at = utc_now()  # an edit may change anything the engine runs
        super().save(*args, **kwargs)  # type: ignore[arg-type]
        if self.instance_id is None:
            # Derived from the primary key, which never repeats, so one schedule has one
            # instance id for life and the engine refuses a second live orchestration.
            self.instance_id = f"{INSTANCE_ID_PREFIX}{self.pk}"
            CleanupSchedule.objects.filter(pk=self.pk).update(instance_id=self.instance_id)

    def stop_because(self, problem: str) -> str:
        """Stop the schedule, its reason "Stopped: <problem>." (cut to fit); that reason."""
        reason = f"Stopped: {problem}."
        limit = self._meta.get_field("status_reason").max_length or len(reason)
        reason = reason if len(reason) <= limit else reason[: limit - 1] + "…"
        self.desired_state, self.next_run_at, self.status_reason = (
            self.DesiredState.STOPPED,
            None,
            reason,
        )
        CleanupSchedule.objects.filter(pk=self.pk).update(
            desired_state=self.desired_state, next_run_at=None, status_reason=reason
        )
        return reason

    @property
    def deletes_as(self) -> Any:
        """Whose rights its runs delete with: the person who last saved it, or for a schedule
        managed in code, that code (reviewed and deployed: a superuser's rights, within the
        site-wide limits CLEANUP_ALLOWED_DIRS, _MODELS and _PROTECTED_FIELDS)."""
        if self.managed_by:
            return DeployedCode(self.managed_by)
        return self.changed_by

    def get_runs_url(self) -> str:
        return reverse("cleanups:schedule_runs", args=[self.pk])

    @property
    def is_running(self) -> bool:
        return self.desired_state == self.DesiredState.RUNNING

    @property
    def is_alive(self) -> bool:
        """Running or paused: its orchestration should exist."""
        return self.desired_state != self.DesiredState.STOPPED

    @property
    def run_limit(self) -> int:
        """Seconds a run may take (0: no limit): its own max_run_seconds or the site's."""
        if self.max_run_seconds is not None:
            return self.max_run_seconds
        return int(settings.CLEANUP_MAX_RUN_SECONDS)

    def cadence_rule(self) -> cadence.Cadence:
        return cadence.Cadence(
            kind=self.cadence,
            interval=self.interval,
            anchor=self.anchor_at or self.start_at,
            cron=self.cron,
            timezone=self.timezone,
            window=cadence.window_of(self),
        )

    def snapshot(self) -> dict[str, object]:
        """The configuration a run ran with, kept on the run record."""
        return {
            "task": self.task,
            "params": self.params,
            "dry_run": self.dry_run,
            "cadence": self.cadence,
            "interval": self.interval.total_seconds(),
            "cron": self.cron,
            "timezone": self.timezone,
            "max_iterations": self.max_iterations,
            "missed_runs": self.missed_runs,
            "max_retries": self.max_retries,
            "pause_after_failures": self.pause_after_failures,
            "max_rows_per_run": self.row_limit,
            "max_table_fraction": self.table_fraction_limit,
            "archive": self.archives,
            "window": [str(self.window_start), str(self.window_end)]
            if cadence.window_of(self)
            else None,
            "max_rows_per_second": self.max_rows_per_second,
            "vacuum": self.vacuum,
        }

    @property
    def row_limit(self) -> int:
        """Rows a run may delete without an approval (0: no limit)."""
        if self.max_rows_per_run is not None:
            return self.max_rows_per_run
        return int(settings.CLEANUP_MAX_ROWS_PER_RUN)

    @property
    def table_fraction_limit(self) -> float:
        """The fraction of a table a run may delete without an approval (0: no limit)."""
        if self.max_table_fraction is not None:
            return self.max_table_fraction
        return float(settings.CLEANUP_MAX_TABLE_FRACTION)

    @property
    def archives(self) -> bool:
        """Whether its runs archive what they delete."""
        if self.archive is not None:
            return self.archive
        return bool(settings.CLEANUP_ARCHIVE_BY_DEFAULT)

    @property
    def upcoming_run_at(self) -> datetime | None:
        """When the next run is due, while the schedule runs. A paused schedule's
        ``next_run_at`` is its plan from before the pause, which resuming revisits."""
        return self.next_run_at if self.desired_state == self.DesiredState.RUNNING else None

    def next_iteration(self) -> int:
        """The iteration after the newest one recorded, so numbering goes on across starts."""
        newest = self.runs.aggregate(newest=models.Max("iteration"))["newest"] or 0
        return max(newest, self.current_iteration) + 1

    def iterations_left(self, iteration: int) -> bool:
        """Whether the current start may run another iteration after ``iteration``."""
        if self.max_iterations is None:
            return True
        return iteration - self.start_iteration + 1 < self.max_iterations
