"""An alert's delivery to one webhook."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class AlertDelivery(models.Model):
    """One alert sent (or not) to one webhook (cleanups.alerts): the newest few per schedule,
    for its page."""

    class Event(models.TextChoices):
        FAILING = "failure_streak_started", "Failure streak started"
        RECOVERED = "recovered", "Recovered"
        PAUSED = "paused_after_failures", "Paused after failures"
        STUCK = "stuck_run", "Stuck run restarted"
        TIMED_OUT = "timed_out", "Run timed out"
        HELD = "run_held", "Run held for approval"
        BACKLOG = "backlog", "Retention backlog over the limit"

    class Status(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    schedule = models.ForeignKey(
        "cleanups.CleanupSchedule", on_delete=models.CASCADE, related_name="alert_deliveries"
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
