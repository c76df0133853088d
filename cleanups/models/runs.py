"""The run record: one iteration of a schedule, written by the run's life cycle, read by people."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections, models
from django.urls import reverse

if TYPE_CHECKING:
    from cleanups.models.schedules import CleanupSchedule


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
        HELD = "held", "Held for approval"

    class Trigger(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        MANUAL = "manual", "Manual (run now)"
        CATCH_UP = "catch_up", "Catch-up"
        RESTART = "restart", "Restart"

    schedule = models.ForeignKey(
        "cleanups.CleanupSchedule", on_delete=models.CASCADE, related_name="runs"
    )
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
    throttled_seconds = models.FloatField(
        default=0.0,
        help_text="Time the run held back between batches: replica lag, max_rows_per_second, "
        "CLEANUP_BATCH_PAUSE_MS.",
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
    # Safety: the guard's decision, approvals, archives and restores.
    review = models.JSONField(
        default=dict,
        blank=True,
        help_text="Held runs: the rule tripped, the counts per target and a sample of the rows "
        "(shown only to people who may view them).",
    )
    approved_by = models.CharField(max_length=150, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_rows = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The most rows the approval lets the run delete."
    )
    approval_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="approval_runs",
        help_text="The held run whose approval this run carried out.",
    )
    rejected_by = models.CharField(max_length=150, blank=True)
    rejected_at = models.DateTimeField(null=True, blank=True)
    archive_parts = models.JSONField(
        default=list,
        blank=True,
        help_text='What went to the archive: [{"name", "rows", "sha256", "bytes"}], per batch.',
    )
    restores = models.JSONField(
        default=list,
        blank=True,
        help_text="Each restore of its archive: who, when, restored, skipped and failed rows.",
    )

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at", "-pk"]
        permissions = [("approve_cleanuprun", "Can approve or reject held runs")]
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

    @property
    def awaits_decision(self) -> bool:
        """Held, and nobody has approved or rejected it yet."""
        return self.status == self.Status.HELD and not self.approved_at and not self.rejected_at

    def save_counts(self) -> None:
        """Write its ``items_deleted``, ``details`` and ``archive_parts`` (the task API's
        context reports through this, inside the batch's transaction)."""
        type(self)._default_manager.filter(pk=self.pk).update(
            items_deleted=self.items_deleted,
            details=self.details,
            archive_parts=self.archive_parts,
            throttled_seconds=self.throttled_seconds,
        )
