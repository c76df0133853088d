"""Alert webhooks: a JSON POST to each webhook of a schedule (``alert_webhooks``) and of the site
(``ALERT_WEBHOOKS``) when a failure streak starts, the schedule recovers, it is paused after
failures, a stuck run is restarted or a run times out.

- Off the run's critical path: ``send`` only queues; a few daemon threads of the worker deliver,
  each URL with its own time-out and retries (exponential backoff). Nothing here ever raises into
  a run, delays the next one or stops a schedule.
- Each outcome is recorded (``AlertDelivery``, the newest few per schedule) and a failure logged
  (logger ``cleanups.alerts``), so the schedule's page shows deliveries that failed. A recorded
  or logged webhook is ``scheme://host/…``: its path and query may hold a token (Slack's do).
- Bodies: a generic JSON object; Slack's ``{"text": ...}`` for ``hooks.slack.com``; a Teams
  MessageCard for ``*.webhook.office.com``.
- SSRF: a schedule's webhooks are whatever a staff editor typed. They may not reach loopback,
  private, link-local or other non-public addresses (the host itself, or any address its name
  resolves to) unless ``ALERT_WEBHOOK_ALLOWED_HOSTS`` lists the host. Checked when the form is
  saved and again at every delivery, which connects to the very addresses it checked (no second
  look-up for DNS to change in between) and follows no redirect. The site-wide
  ``ALERT_WEBHOOKS`` are the deployer's and trusted.
"""

from __future__ import annotations

import atexit
import base64
import functools
import html
import ipaddress
import json
import logging
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import client as http_client
from typing import Any
from urllib.parse import unquote, urlsplit

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import DatabaseError, connections
from django.urls import reverse
from django.utils import timezone

from cleanups.conf import settings
from cleanups.log import escape_control_characters
from cleanups.models import AlertDelivery, CleanupRun, CleanupSchedule

logger = logging.getLogger("cleanups.alerts")

Event = AlertDelivery.Event
FAILING = Event.FAILING
RECOVERED = Event.RECOVERED
PAUSED = Event.PAUSED
STUCK = Event.STUCK
TIMED_OUT = Event.TIMED_OUT

# A schedule has at most this many webhooks of its own.
MAX_WEBHOOKS = 5
MAX_URL_LENGTH = 2000
# Delivery records kept per schedule (the newest); older ones are deleted as new ones come.
DELIVERIES_KEPT = 50
# Delivery threads: each URL always goes to the same one, so its alerts arrive in order (a
# failure streak's start before its recovery) while other URLs go on.
THREADS = 4
# Alerts waiting for each thread; more are dropped (and logged), never waited for.
QUEUE_SIZE = 250
# How long a worker that exits waits for the alerts still queued (s).
EXIT_FLUSH_SECONDS = 5.0
# Response statuses worth another attempt; any other non-2xx is final.
RETRY_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "cleanups-alerts/1"
# NAT64's well-known prefix: such an address reaches the IPv4 address inside it.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


# The body --------------------------------------------------------------------------------


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
    which = f"run {run.iteration}" if run is not None else "its run"
    plural = "" if failures == 1 else "s"
    return {
        FAILING: f"{name} is failing: {which} {run.status if run else 'failed'}.",
        RECOVERED: f"{name} recovered: {which} succeeded after {failures} failed run{plural}.",
        PAUSED: f"{name} was paused after {failures} failed run{plural} in a row.",
        STUCK: f"{name} was stuck and has been restarted.",
        TIMED_OUT: f"{name}: {which} timed out and was abandoned.",
    }.get(event, f"{name}: {event}.")


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
}
_COLOURS = {FAILING: "D13438", RECOVERED: "2EB886", PAUSED: "D13438", STUCK: "F2C744"}


def is_slack(url: str) -> bool:
    return _hostname(url) == "hooks.slack.com"


def is_teams(url: str) -> bool:
    return _hostname(url).endswith(".webhook.office.com")


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


# Queueing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    event: str
    schedule_id: int
    schedule_name: str
    run_pk: int | None
    iteration: int | None
    url: str
    site_wide: bool
    body: dict[str, Any]


_queues: list[queue.Queue[_Job]] = []
_start_lock = threading.Lock()
_idle = threading.Condition()
_pending = 0


def targets(schedule: CleanupSchedule) -> list[tuple[str, bool]]:
    """Where a schedule's alerts go: (url, site-wide) for its own webhooks and the site's, each
    URL once (a URL in both is the site's, so trusted)."""
    found: dict[str, bool] = {}
    for url in settings.ALERT_WEBHOOKS or []:
        if isinstance(url, str) and url.strip():
            found[url.strip()] = True
    for url in schedule.alert_webhooks or []:
        if isinstance(url, str) and url.strip():
            found.setdefault(url.strip(), False)
    return list(found.items())


def send(
    event: str,
    schedule: CleanupSchedule,
    run: CleanupRun | None = None,
    *,
    error: str = "",
    failures: int | None = None,
) -> None:
    """Queue the alert for every webhook of the schedule and the site. Never raises, never waits
    (no database query, no network): deliveries happen on the alert threads."""
    try:
        where = targets(schedule)
        if not where:
            return
        body = payload(event, schedule, run, error=error, failures=failures)
        for url, site_wide in where:
            job = _Job(
                event=str(event),
                schedule_id=schedule.pk,
                schedule_name=schedule.name,
                run_pk=run.pk if run is not None else None,
                iteration=run.iteration if run is not None else None,
                url=url,
                site_wide=site_wide,
                body=body,
            )
            _enqueue(job)
    except Exception:  # an alert must never break what reported it
        logger.exception("could not queue the %s alert of schedule %s", event, schedule.pk)


def _enqueue(job: _Job) -> None:
    global _pending
    _start_threads()
    with _idle:
        _pending += 1
    try:
        _queues[hash(job.url) % len(_queues)].put_nowait(job)
    except queue.Full:
        with _idle:
            _pending -= 1
            _idle.notify_all()
        logger.warning(
            "alert %s of schedule %s to %s dropped: %d alerts are waiting already",
            job.event,
            job.schedule_name,
            redact(job.url),
            QUEUE_SIZE,
        )


def _start_threads() -> None:
    with _start_lock:
        if _queues:
            return
        for number in range(THREADS):
            jobs: queue.Queue[_Job] = queue.Queue(maxsize=QUEUE_SIZE)
            name = f"cleanups-alerts-{number}"
            threading.Thread(target=_serve, args=(jobs,), name=name, daemon=True).start()
            _queues.append(jobs)
        atexit.register(flush, EXIT_FLUSH_SECONDS)


def _serve(jobs: queue.Queue[_Job]) -> None:
    global _pending
    while True:
        job = jobs.get()
        try:
            result = deliver(job.url, body_for(job.url, job.body), trusted=job.site_wide)
            _record(job, result)
        except Exception:
            logger.exception(
                "alert %s of schedule %s: delivery crashed", job.event, job.schedule_id
            )
        finally:
            connections.close_all()  # this thread's own
            with _idle:
                _pending -= 1
                _idle.notify_all()


def flush(timeout: float = 10.0) -> bool:
    """Wait until every queued alert is delivered (or has failed for good); False on time-out."""
    deadline = time.monotonic() + timeout
    with _idle:
        while _pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _idle.wait(left)
    return True


# Delivery --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    error: str = ""
    status: int | None = None


class Refused(Exception):
    """The webhook may not be reached (SSRF rule): final, never retried."""


def deliver(url: str, body: dict[str, Any], *, trusted: bool = False) -> Delivery:
    """POST ``body`` as JSON to ``url``, retrying a network error, a time-out, a 5xx, 408, 425 or
    429 with exponential backoff. ``trusted``: a site-wide webhook, exempt from the SSRF rule."""
    data = json.dumps(body).encode()
    attempts = max(int(settings.ALERT_WEBHOOK_ATTEMPTS), 1)
    backoff = max(float(settings.ALERT_WEBHOOK_BACKOFF_SECONDS), 0.0)
    error, status = "", None
    for attempt in range(1, attempts + 1):
        try:
            status, reason = _post(url, data, trusted=trusted)
        except Refused as refused:
            return Delivery(False, attempt, f"Refused: {refused}")
        except (OSError, http_client.HTTPException, ValueError) as problem:
            status, retry = None, True
            error = _describe(problem, url)
        else:
            if 200 <= status < 300:
                return Delivery(True, attempt, status=status)
            error = f"HTTP {status} {reason}".strip()
            if 300 <= status < 400:
                error += " (redirects are not followed)"
            retry = status in RETRY_STATUSES or status >= 500
        if not retry or attempt == attempts:
            return Delivery(False, attempt, error, status)
        time.sleep(backoff * 2 ** (attempt - 1))
    return Delivery(False, attempts, error, status)  # pragma: no cover (the loop returns)


def _post(url: str, data: bytes, *, trusted: bool) -> tuple[int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("only http and https URLs with a host are webhooks")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not trusted and not host_allowed(host):
        internal = [a for a in addresses if is_internal(a[1][0])]
        if internal:
            raise Refused(_internal_message(host, internal[0][1][0]))
    timeout = float(settings.ALERT_WEBHOOK_TIMEOUT)
    connection: http_client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        connection = http_client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http_client.HTTPConnection(host, port, timeout=timeout)
    # Connect to the addresses just checked, never to a second look-up's (TLS still verifies
    # the certificate against the host name).
    connection._create_connection = functools.partial(_connect, addresses)  # type: ignore[attr-defined]
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
    }
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=data, headers=headers)
        response = connection.getresponse()
        response.read(65536)
        return response.status, response.reason or ""
    finally:
        connection.close()


def _resolve(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise OSError(f"cannot resolve {host}: {error}") from error
    return [(family, sockaddr) for family, _, _, _, sockaddr in found]


def _connect(
    addresses: list[tuple[int, tuple[Any, ...]]],
    address: Any,
    timeout: float | None = None,
    source_address: Any = None,
) -> socket.socket:
    last: OSError = OSError("no address to connect to")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as error:
            sock.close()
            last = error
    raise last


def _describe(problem: BaseException, url: str) -> str:
    """An error as one line that never repeats the URL's path or query (a token may be there)."""
    text = f"{type(problem).__name__}: {problem}" if str(problem) else type(problem).__name__
    parts = urlsplit(url)
    for secret in (parts.path, parts.query, parts.password or "", url):
        if secret and len(secret) > 1:
            text = text.replace(secret, "…")
    return escape_control_characters(text)[:500]


# The SSRF rule --------------------------------------------------------------------------------


def is_internal(address: str) -> bool:
    """Not a public unicast address: loopback, private, link-local, shared, reserved, multicast,
    unspecified (also as IPv4-mapped or NAT64 IPv6)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
        address.split("%", 1)[0]
    )
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return not ip.is_global or ip.is_multicast


def host_allowed(host: str) -> bool:
    """Whether ALERT_WEBHOOK_ALLOWED_HOSTS lets a schedule's webhook reach ``host`` although it
    is internal."""
    allowed = {
        h.strip().lower().strip("[]") for h in settings.ALERT_WEBHOOK_ALLOWED_HOSTS or [] if h
    }
    return host.lower().strip("[]") in allowed


def _internal_message(host: str, address: str) -> str:
    where = host if host == address else f"{host} ({address})"
    return (
        f"{where} is an internal address (loopback, private or link-local); a deployer may "
        "allow it with ALERT_WEBHOOK_ALLOWED_HOSTS"
    )


def webhook_problem(url: str) -> str | None:
    """Why a schedule's webhook URL cannot be saved; None when it can. A host name is looked
    up: if any address it has is internal, it is refused (one that does not resolve now is
    accepted: every delivery checks again)."""
    if len(url) > MAX_URL_LENGTH:
        return f"a webhook URL can be at most {MAX_URL_LENGTH} characters"
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        return "only http:// and https:// webhooks are allowed"
    try:
        URLValidator(schemes=["http", "https"])(url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
    except (ValidationError, ValueError):
        return "not a valid URL"
    if not host:
        return "not a valid URL"
    if host_allowed(host):
        return None
    try:
        addresses = [sockaddr[0] for _, sockaddr in _resolve(host, port)]
    except OSError:
        return None
    internal = [address for address in addresses if is_internal(address)]
    if internal:
        return _internal_message(host, internal[0])
    return None


class WebhookURLsField(forms.Field):
    """A schedule's webhook URLs: one per line in the admin (a list in a declaration in code)."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 80})

    def __init__(self, *, encoder: Any = None, decoder: Any = None, **kwargs: Any) -> None:
        # The model's JSONField offers its encoder and decoder: a list of lines needs neither.
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if value in (None, ""):
            return []
        if isinstance(value, str):
            lines = value.splitlines()
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            lines = list(value)
        else:
            raise ValidationError("Give webhook URLs one per line.", code="invalid")
        urls: list[str] = []
        for line in lines:
            if line.strip() and line.strip() not in urls:
                urls.append(line.strip())
        return urls

    def validate(self, value: list[str]) -> None:
        super().validate(value)
        if len(value) > MAX_WEBHOOKS:
            raise ValidationError(
                f"At most {MAX_WEBHOOKS} webhooks per schedule (the site's ALERT_WEBHOOKS get "
                "every alert as well).",
                code="max_webhooks",
            )
        errors = []
        for url in value:
            problem = webhook_problem(url)
            if problem:
                shown = url if len(url) <= 80 else url[:79] + "…"
                errors.append(ValidationError(f"{shown}: {problem}.", code="webhook"))
        if errors:
            raise ValidationError(errors)


# Records and display ---------------------------------------------------------------------


def redact(url: str) -> str:
    """``scheme://host[:port]/…``: what a webhook may be shown and logged as."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}{f':{port}' if port else ''}/"
    if parts.path.strip("/") or parts.query:
        shown += "…"
    return escape_control_characters(shown)


def _hostname(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _record(job: _Job, result: Delivery) -> None:
    target = redact(job.url)
    if result.delivered:
        logger.info(
            "alert %s of schedule %s delivered to %s (attempt %d)",
            job.event,
            job.schedule_name,
            target,
            result.attempts,
        )
    else:
        logger.warning(
            "alert %s of schedule %s to %s failed after %d attempt(s): %s",
            job.event,
            job.schedule_name,
            target,
            result.attempts,
            result.error,
        )
    try:
        AlertDelivery.objects.create(
            schedule_id=job.schedule_id,
            run_pk=job.run_pk,
            iteration=job.iteration,
            event=job.event,
            target=target[:200],
            site_wide=job.site_wide,
            status=AlertDelivery.Status.DELIVERED
            if result.delivered
            else AlertDelivery.Status.FAILED,
            http_status=result.status,
            error=result.error[:500],
            attempts=result.attempts,
        )
        older = AlertDelivery.objects.filter(schedule_id=job.schedule_id).order_by("-at", "-pk")
        stale = list(older.values_list("pk", flat=True)[DELIVERIES_KEPT:])
        if stale:
            AlertDelivery.objects.filter(pk__in=stale).delete()
    except DatabaseError as error:  # the schedule was deleted meanwhile, the database is down
        logger.warning(
            "could not record the %s alert of schedule %s: %s", job.event, job.schedule_id, error
        )


def page_context(schedule: CleanupSchedule, failed: int = 5) -> dict[str, Any]:
    """What the schedule's page shows of its alerts: where they go (redacted), the newest
    failed deliveries and the newest successful one."""
    deliveries = AlertDelivery.objects.filter(schedule=schedule)
    return {
        "webhooks": [redact(url) for url, site_wide in targets(schedule) if not site_wide],
        "site_wide": len(settings.ALERT_WEBHOOKS or []),
        "failed": list(deliveries.filter(status=AlertDelivery.Status.FAILED)[:failed]),
        "last_delivered": deliveries.filter(status=AlertDelivery.Status.DELIVERED).first(),
    }


def settings_problems() -> list[str]:
    """What is wrong with the alert settings (for the system checks)."""
    problems = []
    attempts = settings.ALERT_WEBHOOK_ATTEMPTS
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        problems.append(
            f"ALERT_WEBHOOK_ATTEMPTS is {attempts!r}: it must be a whole number of 1 or more."
        )
    webhooks = settings.ALERT_WEBHOOKS
    if isinstance(webhooks, list | tuple):
        for url in webhooks:
            if not isinstance(url, str):
                continue  # the list check says so
            if urlsplit(url).scheme not in ("http", "https") or not _hostname(url):
                problems.append(
                    f"ALERT_WEBHOOKS lists {redact(url)}, which is not an http:// or https:// URL."
                )
    base = settings.CLEANUP_SITE_URL
    if not isinstance(base, str) or (base and not (_absolute(base) and _hostname(base))):
        problems.append(
            f"CLEANUP_SITE_URL is {base!r}: it must be empty or the site's address, "
            "e.g. https://cleanups.example.com."
        )
    return problems
