"""Schedules operators manage, and the run records activities write."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connections, models
from django.db.models import OuterRef, Subquery
from django.urls import reverse
from django.utils import timezone

from cleanups import cadence
from cleanups.conf import settings
from cleanups.log import has_control_characters
from cleanups.registry import get_task, task_choices

if TYPE_CHECKING:
    from cleanups.control import ControlOutcome

INSTANCE_ID_PREFIX = "cleanup-schedule-"


def _default_timezone() -> str:
    from django.conf import settings

    return settings.TIME_ZONE


def _is_timezone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


MIN_INTERVAL = timedelta(seconds=1)


class DeployedCode:
    """The editor of a schedule declared in code (``CLEANUP_SCHEDULES``, a ``cleanup_schedules``
    module): the code was reviewed and deployed, so it has every permission a superuser has. The
    deployment's own limits (allowed models and directories, protected fields) still apply: they
    are checked before anyone's permissions."""

    is_active = True
    is_staff = False
    is_superuser = True

    def __init__(self, source: str) -> None:
        self.source = source
        self.pk = f"code:{source}"  # no user's: truthy, so the checks see an editor

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return True

    def get_username(self) -> str:
        return f"code ({self.source})"

    def __str__(self) -> str:
        return self.get_username()


class ScheduleQuerySet(models.QuerySet["CleanupSchedule"]):
    def should_run(self) -> ScheduleQuerySet:
        return self.filter(desired_state=CleanupSchedule.DesiredState.RUNNING)

    def alive(self) -> ScheduleQuerySet:
        """Schedules whose orchestration should exist: running or paused."""
        return self.exclude(desired_state=CleanupSchedule.DesiredState.STOPPED)

    def with_last_run(self) -> ScheduleQuerySet:
        """Annotate the newest run's status and start time (two subqueries, not a query per row)."""
        newest = CleanupRun.objects.filter(schedule=OuterRef("pk")).order_by("-iteration")
        return self.annotate(
            last_run_status=Subquery(newest.values("status")[:1]),
            last_run_started_at=Subquery(newest.values("started_at")[:1]),
        )


class CleanupSchedule(models.Model):
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
        help_text="Cron cadence: the IANA time zone the expression is read in.",
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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        super().save(*args, **kwargs)  # type: ignore[arg-type]
        if self.instance_id is None:
            # Derived from the primary key, which never repeats, so one schedule has one
            # instance id for life and the engine refuses a second live orchestration.
            self.instance_id = f"{INSTANCE_ID_PREFIX}{self.pk}"
            CleanupSchedule.objects.filter(pk=self.pk).update(instance_id=self.instance_id)

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
        }

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

    def start(self) -> ControlOutcome:
        from cleanups.control import start_schedule

        return start_schedule(self)

    def terminate(self) -> ControlOutcome:
        from cleanups.control import terminate_schedule

        return terminate_schedule(self)


class RunQuerySet(models.QuerySet["CleanupRun"]):
    def newest_first(self) -> RunQuerySet:
        return self.order_by("-started_at", "-pk")

    def running(self) -> RunQuerySet:
        return self.filter(status=CleanupRun.Status.RUNNING)

    def newest_per_schedule(
        self, schedules: Iterable[CleanupSchedule], count: int, fields: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """The newest ``count`` runs of each schedule as tuples of ``fields``, by schedule and
        newest first: one query that reads about ``count`` index entries per schedule, however
        many runs each has.

        PostgreSQL: a LATERAL join, an index scan of (schedule, iteration) per schedule.
        SQLite has no LATERAL; there the runs are the iterations after the schedule's
        ``current_iteration - count`` (iterations are numbered without gaps across starts, and
        the activity advances ``current_iteration`` as each begins), which SQLite's planner
        reads as one index range per schedule. PostgreSQL's planner cannot estimate that
        bound and scans the whole table for it (200 ms at a million runs, against 24 ms).
        """
        schedules = list(schedules)
        connection = connections[self.db]
        if connection.vendor == "postgresql":
            meta, quote = self.model._meta, connection.ops.quote_name
            columns = [meta.get_field("id" if name == "pk" else name).column for name in fields]
            inner = ", ".join(quote(column) for column in {*columns, "iteration"})
            outer = ", ".join(f"run.{quote(column)}" for column in columns)
            sql = (
                f"SELECT {outer} FROM unnest(%s::bigint[]) WITH ORDINALITY AS s(id, n)"
                f" CROSS JOIN LATERAL (SELECT {inner} FROM {quote(meta.db_table)}"
                " WHERE schedule_id = s.id ORDER BY iteration DESC LIMIT %s) AS run"
                " ORDER BY s.n, run.iteration DESC"
            )
            with connection.cursor() as cursor:
                cursor.execute(sql, [[s.pk for s in schedules], count])
                return cursor.fetchall()
        return list(
            self.filter(
                schedule__in=[s.pk for s in schedules],
                iteration__gt=models.F("schedule__current_iteration") - count,
            )
            .order_by("schedule_id", "-iteration")
            .values_list(*fields)
        )


class CleanupRun(models.Model):
    """One iteration of a schedule: written by the cleanup activity, read by people."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        INTERRUPTED = "interrupted", "Interrupted"
        SKIPPED = "skipped", "Skipped"
        TIMED_OUT = "timed_out", "Timed out"

    class Trigger(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        MANUAL = "manual", "Manual (run now)"
        CATCH_UP = "catch_up", "Catch-up"
        RESTART = "restart", "Restart"

    schedule = models.ForeignKey(CleanupSchedule, on_delete=models.CASCADE, related_name="runs")
    iteration = models.PositiveIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.SCHEDULED)
    triggered_by = models.CharField(max_length=150, blank=True, help_text="Who asked (run now).")
    reason = models.CharField(
        max_length=20,
        blank=True,
        help_text="Skipped runs: worker down, late (the worker was too busy), overran or paused.",
    )
    config = models.JSONField(
        default=dict, blank=True, help_text="The schedule's configuration this run ran with."
    )
    task = models.CharField(max_length=100, help_text="The task this run executed.")
    planned_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the schedule planned it (blank for a manual run): it never starts before.",
    )
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration = models.DurationField(null=True, blank=True)
    dry_run = models.BooleanField(default=False, help_text="Counted only; nothing was deleted.")
    items_deleted = models.PositiveBigIntegerField(default=0)
    details = models.JSONField(
        default=dict,
        blank=True,
        help_text='What went, per target: {"targets": {"app.Model": {"items": n, "bytes": b}}}.',
    )
    parts = models.PositiveIntegerField(
        default=1, help_text="Activity calls this run took (a long cleanup resumes in parts)."
    )
    message = models.TextField(blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="The worker that ran it.")
    attempts = models.PositiveIntegerField(
        default=1, help_text="Deliveries of this iteration (the engine delivers at least once)."
    )

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at", "-pk"]
        constraints = [
            # At-least-once delivery: a redelivered iteration must find and update its record.
            models.UniqueConstraint(
                fields=["schedule", "iteration"], name="unique_run_per_iteration"
            ),
        ]
        indexes = [
            models.Index(fields=["schedule", "-started_at"], name="run_schedule_newest"),
            models.Index(fields=["-started_at"], name="run_newest"),
            # /runs/?status=failed, newest first: read backwards, it also orders by -pk.
            models.Index(fields=["status", "started_at"], name="run_status_started"),
            # A schedule's runs of one status (its history filtered), newest first.
            models.Index(fields=["schedule", "status", "iteration"], name="run_schedule_status"),
            models.Index(
                fields=["worker"],
                condition=models.Q(status="running"),
                name="run_running_by_worker",
            ),
            # The dashboard's p99 lateness of the last hour reads only this index: a fleet's
            # busy hour is 100,000 runs, and fetching each from the table took 4x as long.
            models.Index(
                fields=["started_at", "planned_at"],
                condition=models.Q(planned_at__isnull=False),
                name="run_lateness",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.schedule} #{self.iteration} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("cleanups:run_detail", args=[self.pk])


class WorkerHeartbeat(models.Model):
    """A runworker process that is (or was) alive: lets others tell a dead worker's runs."""

    worker = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.worker

    def seems_dead(self, stale_after: timedelta | None = None) -> bool:
        """Not beaten for ``stale_after`` (default: six reconcile intervals, at least 30 s), or
        on this machine with its process gone."""
        if stale_after is None:
            stale_after = timedelta(seconds=max(30.0, settings.RECONCILE_INTERVAL * 6))
        if self.last_seen < timezone.now() - stale_after:
            return True
        return self.hostname == socket.gethostname() and not _pid_alive(self.pid)


class AlertDelivery(models.Model):
    """One alert sent (or not) to one webhook (cleanups.alerts): the newest few per schedule,
    for its page."""

    class Event(models.TextChoices):
        FAILING = "failure_streak_started", "Failure streak started"
        RECOVERED = "recovered", "Recovered"
        PAUSED = "paused_after_failures", "Paused after failures"
        STUCK = "stuck_run", "Stuck run restarted"
        TIMED_OUT = "timed_out", "Run timed out"

    class Status(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    schedule = models.ForeignKey(
        CleanupSchedule, on_delete=models.CASCADE, related_name="alert_deliveries"
    )
    # The run's primary key and iteration, not a foreign key: pruning run history stays a
    # plain delete, and the record outlives the run.
    run_pk = models.PositiveBigIntegerField(null=True, blank=True)
    iteration = models.PositiveIntegerField(null=True, blank=True)
    event = models.CharField(max_length=30, choices=Event.choices)
    target = models.CharField(
        max_length=200, help_text="The webhook as scheme://host/… (its path may hold a token)."
    )
    site_wide = models.BooleanField(default=False, help_text="One of the site's ALERT_WEBHOOKS.")
    status = models.CharField(max_length=10, choices=Status.choices)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["schedule", "-at"], name="alert_schedule_newest")]

    def __str__(self) -> str:
        return f"{self.schedule} {self.event} → {self.target} ({self.status})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
