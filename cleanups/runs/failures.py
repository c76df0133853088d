"""Failure streaks: counted, alerted once per streak, and a pause when the schedule asks for one."""

from __future__ import annotations

import logging

from django.core.mail import mail_admins, send_mail
from django.db import transaction
from django.utils import timezone

from cleanups import alerts
from cleanups.models import CleanupRun, CleanupSchedule

logger = logging.getLogger("cleanups.runs")
Status = CleanupRun.Status
Trigger = CleanupRun.Trigger


def count_failure(schedule: CleanupSchedule, run: CleanupRun) -> str:
    """Track the failure streak; notify once per streak; pause if asked. The pause reason."""
    if run.status not in (Status.FAILED, Status.TIMED_OUT):
        if schedule.consecutive_failures or schedule.failure_notified:
            CleanupSchedule.objects.filter(pk=schedule.pk).update(
                consecutive_failures=0, failure_notified=False
            )
            if schedule.failure_notified and run.status == Status.SUCCEEDED:
                alerts.send(alerts.RECOVERED, schedule, run)
        return ""
    with transaction.atomic():
        fresh = CleanupSchedule.objects.select_for_update().get(pk=schedule.pk)
        fresh.consecutive_failures += 1
        notify = not fresh.failure_notified
        fresh.failure_notified = True
        pause = bool(
            fresh.pause_after_failures and fresh.consecutive_failures >= fresh.pause_after_failures
        )
        fields = ["consecutive_failures", "failure_notified"]
        reason = ""
        if pause:
            reason = f"Paused after {fresh.consecutive_failures} failed runs in a row."
            fresh.desired_state = CleanupSchedule.DesiredState.PAUSED
            fresh.status_reason = reason
            fresh.paused_at = timezone.now()
            fields += ["desired_state", "status_reason", "paused_at"]
        fresh.save(update_fields=fields)
    if notify and run.status != Status.TIMED_OUT:  # a time-out has its own alert, just sent
        alerts.send(alerts.FAILING, fresh, run)
    if pause:
        alerts.send(alerts.PAUSED, fresh, run)
    if notify:
        notify_failure(fresh, run)
    return reason


def notify_failure(schedule: CleanupSchedule, run: CleanupRun) -> None:
    subject = f"Cleanup schedule “{schedule.name}” failed (iteration {run.iteration})"
    body = (
        f"The cleanup task {run.task!r} failed:\n\n{run.error}\n\n{run.traceback}\n"
        "You get this once per streak of failures; the next success resets it."
    )
    send_notice(schedule, subject, body, "failure notice")


def send_notice(schedule: CleanupSchedule, subject: str, body: str, what: str) -> None:
    """Mail the schedule's notify_email, or the site's ADMINS; never raises."""
    try:
        if schedule.notify_email:
            send_mail(subject, body, None, [schedule.notify_email])
        else:
            mail_admins(subject, body)
    except Exception as error:  # a mail server being down must not stop the schedule
        logger.warning("could not send the %s for %s: %s", what, schedule.name, error)
