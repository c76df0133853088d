"""What an alert says: its events, the generic JSON body, and the bodies Slack and Teams want."""

from __future__ import annotations

import html
from typing import Any

from django.urls import reverse
from django.utils import timezone

from cleanups.conf import settings
from cleanups.formatting import behind_label, rows_label
from cleanups.models import AlertDelivery, CleanupRun, CleanupSchedule
from cleanups.webhooks import hostname

Event = AlertDelivery.Event
FAILING = Event.FAILING
RECOVERED = Event.RECOVERED
PAUSED = Event.PAUSED
STUCK = Event.STUCK
TIMED_OUT = Event.TIMED_OUT
HELD = Event.HELD
BACKLOG = Event.BACKLOG


def payload(
    event: str,
    schedule: CleanupSchedule,
    run: CleanupRun | None = None,
    *,
    error: str = "",
    failures: int | None = None,
) -> dict[str, Any]:
    """The generic JSON body of an alert: what happened, to which schedule and run, and a link."""
    schedule_url = site_url(reverse("cleanups:schedule_detail", args=[schedule.pk]))
    failures = schedule.consecutive_failures if failures is None else failures
    error = (error or (run.error if run is not None else ""))[:1000]
    return {
        "event": str(event),
        "summary": _summary(event, schedule, run, failures),
        "schedule": {
            "id": schedule.pk,
            "name": schedule.name,
            "task": schedule.task,
            "url": schedule_url,
        },
        "run": _run(run),
        "error": error,
        "consecutive_failures": failures,
        "url": site_url(run.get_absolute_url()) if run is not None else schedule_url,
        "at": timezone.now().isoformat(),
    }


def _run(run: CleanupRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "id": run.pk,
        "iteration": run.iteration,
        "status": run.status,
        "trigger": run.trigger,
        "task": run.task,
        "dry_run": run.dry_run,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "duration_seconds": run.duration.total_seconds() if run.duration is not None else None,
        "items_deleted": run.items_deleted,
    }


def _summary(event: str, schedule: CleanupSchedule, run: CleanupRun | None, failures: int) -> str:
    name = f"Cleanup schedule “{schedule.name}”"
    if event == BACKLOG:
        return _backlog_summary(name, schedule, run)
    which = f"run {run.iteration}" if run is not None else "its run"
    plural = "" if failures == 1 else "s"
    return {
        FAILING: f"{name} is failing: {which} {run.status if run else 'failed'}.",
        RECOVERED: f"{name} recovered: {which} succeeded after {failures} failed run{plural}.",
        PAUSED: f"{name} was paused after {failures} failed run{plural} in a row.",
        STUCK: f"{name} was stuck and has been restarted.",
        TIMED_OUT: f"{name}: {which} timed out and was abandoned.",
        HELD: f"{name}: {which} is held for approval and deleted nothing.",
    }.get(event, f"{name}: {event}.")


def _backlog_summary(name: str, schedule: CleanupSchedule, run: CleanupRun | None) -> str:
    """The run's measurement (it knows whether the count was capped), else the schedule's."""
    details = run.details if run is not None and isinstance(run.details, dict) else {}
    measured = details.get("backlog")
    if isinstance(measured, dict):
        seconds, rows = measured.get("seconds"), measured.get("rows")
        capped = bool(measured.get("capped"))
    else:
        seconds, rows, capped = schedule.backlog_seconds, schedule.backlog_rows, False
    if not seconds:
        return f"{name} is behind its retention policy."
    left = f" ({rows_label(rows, capped)} left)" if rows else ""
    return f"{name} is {behind_label(seconds)} behind its retention policy{left}."


def site_url(path: str) -> str:
    """``path`` under CLEANUP_SITE_URL (the path alone while that is empty)."""
    base = str(settings.CLEANUP_SITE_URL or "").rstrip("/")
    return f"{base}{path}" if base else path


_EMOJI = {
    FAILING: ":rotating_light:",
    RECOVERED: ":white_check_mark:",
    PAUSED: ":double_vertical_bar:",
    STUCK: ":warning:",
    TIMED_OUT: ":hourglass:",
    HELD: ":raised_hand:",
    BACKLOG: ":snail:",
}
_COLOURS = {
    FAILING: "D13438",
    RECOVERED: "2EB886",
    PAUSED: "D13438",
    STUCK: "F2C744",
    HELD: "F2C744",
    BACKLOG: "F2C744",
}


def is_slack(url: str) -> bool:
    return hostname(url) == "hooks.slack.com"


def is_teams(url: str) -> bool:
    return hostname(url).endswith(".webhook.office.com")


def body_for(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body as the webhook's service wants it: Slack's, a Teams card, or the generic one."""
    if is_slack(url):
        return slack_body(body)
    if is_teams(url):
        return teams_body(body)
    return body


def slack_body(body: dict[str, Any]) -> dict[str, Any]:
    """Slack's incoming-webhook message: mrkdwn text with a link to the run."""

    def escape(text: str) -> str:  # Slack's three control characters
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    lines = [f"{_EMOJI.get(body['event'], ':bell:')} *{escape(body['summary'])}*"]
    if body["error"]:
        lines.append(f"```{escape(body['error'])}```")
    link = body["url"]
    label = "Open the run" if body["run"] else "Open the schedule"
    lines.append(f"<{link}|{label}>" if _absolute(link) else f"{label}: {escape(link)}")
    return {"text": "\n".join(lines)}


def teams_body(body: dict[str, Any]) -> dict[str, Any]:
    """A Microsoft Teams (Office 365 connector) MessageCard, with a button to the run."""
    facts = [
        {"name": "Schedule", "value": html.escape(body["schedule"]["name"])},
        {"name": "Task", "value": html.escape(body["schedule"]["task"])},
    ]
    if body["run"]:
        facts.append(
            {"name": "Run", "value": f"{body['run']['iteration']} ({body['run']['status']})"}
        )
    card: dict[str, Any] = {
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "summary": body["summary"],
        "themeColor": _COLOURS.get(body["event"], "D13438"),
        "title": html.escape(body["summary"]),
        "text": html.escape(body["error"]) if body["error"] else html.escape(body["url"]),
        "sections": [{"facts": facts}],
    }
    if _absolute(body["url"]):
        label = "Open the run" if body["run"] else "Open the schedule"
        card["potentialAction"] = [
            {"@type": "OpenUri", "name": label, "targets": [{"os": "default", "uri": body["url"]}]}
        ]
    return card


def _absolute(url: str) -> bool:
    return url.startswith(("http://", "https://"))
