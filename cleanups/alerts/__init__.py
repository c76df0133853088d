"""Alerts: a JSON POST to each webhook of a schedule (``alert_webhooks``) and of the site
(``ALERT_WEBHOOKS``) when a failure streak starts, the schedule recovers, it is paused after
failures, a stuck run is restarted, a run times out, a run is held for approval or a schedule's
retention backlog goes over CLEANUP_BACKLOG_ALERT_SECONDS.

- ``events``: what an alert says (the generic body; Slack's ``{"text": ...}`` for
  ``hooks.slack.com``; a Teams MessageCard for ``*.webhook.office.com``).
- ``delivery``: ``send`` only queues; a few daemon threads deliver through the webhook client
  (``cleanups.webhooks``, which holds the SSRF rule) and record each outcome
  (``AlertDelivery``); a failure is logged (logger ``cleanups.alerts``). Nothing here ever
  raises into a run, delays the next one or stops a schedule.
"""

from cleanups.alerts.delivery import flush, send, targets
from cleanups.alerts.events import (
    BACKLOG,
    FAILING,
    HELD,
    PAUSED,
    RECOVERED,
    STUCK,
    TIMED_OUT,
    Event,
    body_for,
    payload,
    site_url,
    slack_body,
    teams_body,
)

__all__ = [
    "BACKLOG",
    "FAILING",
    "HELD",
    "PAUSED",
    "RECOVERED",
    "STUCK",
    "TIMED_OUT",
    "Event",
    "body_for",
    "flush",
    "payload",
    "send",
    "site_url",
    "slack_body",
    "targets",
    "teams_body",
]
