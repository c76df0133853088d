"""Alert webhooks: bodies, retries, the SSRF rule, and alerts from real runs on the real engine.

Every webhook here is a local HTTP server the test starts on 127.0.0.1: nothing leaves the
machine. A schedule's own webhooks may reach 127.0.0.1 only because the tests allow it
(ALERT_WEBHOOK_ALLOWED_HOSTS); the site-wide ALERT_WEBHOOKS are trusted as they are.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from cleanups import alerts, control, webhooks
from cleanups.durable.reconciler import Reconciler
from cleanups.models import AlertDelivery, CleanupRun, CleanupSchedule
from cleanups.runs.execute import execute_iteration
from tests.conftest import form_data, runs_of, wait_for_clock, wait_until, waiting
from tests.testapp.cleanup_tasks import FLAKY_FAILURES
from tests.testapp.models import Event

SITE = "http://cleanups.test"
ADD = "admin:cleanups_cleanupschedule_add"


class Hook:
    """A local webhook receiver: records every POST; answers per path as planned (a list of
    statuses, the last one repeated; 200 if none), optionally holding the answer until told."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.plans: dict[str, list[int]] = {}
        self.holds: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                with hook._lock:
                    hook.posts.append(
                        {
                            "path": path,
                            "query": self.path.partition("?")[2],
                            "headers": dict(self.headers),
                            "body": json.loads(raw),
                        }
                    )
                    plan = hook.plans.get(path, [200])
                    status = plan.pop(0) if len(plan) > 1 else plan[0]
                hold = hook.holds.get(path)
                if hold is not None:
                    hold.wait(30)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [p for p in self.posts if path is None or p["path"] == path]

    def events(self, path: str) -> list[str]:
        return [p["body"]["event"] for p in self.received(path)]

    def close(self) -> None:
        for hold in self.holds.values():
            hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _alert_settings(settings):
    settings.ALERT_WEBHOOKS = []
    settings.ALERT_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]  # the tests' own local receiver
    settings.ALERT_WEBHOOK_BACKOFF_SECONDS = 0.05
    settings.ALERT_WEBHOOK_ATTEMPTS = 3
    settings.ALERT_WEBHOOK_TIMEOUT = 5.0
    settings.CLEANUP_SITE_URL = SITE
    settings.MISSED_RUN_GRACE_SECONDS = 0.4


@pytest.fixture
def hook(settings):
    receiver = Hook()
    yield receiver
    for hold in receiver.holds.values():
        hold.set()
    # Before the settings go back: no delivery of this test may outlive it.
    assert alerts.flush(30), "alerts still queued at the end of the test"
    receiver.close()


def delivered_rows(schedule: CleanupSchedule, **filters: Any) -> list[AlertDelivery]:
    return list(AlertDelivery.objects.filter(schedule=schedule, **filters).order_by("at", "pk"))


def fake_run(schedule: CleanupSchedule, **fields: Any) -> CleanupRun:
    now = timezone.now()
    values = {
        "iteration": 1,
        "task": schedule.task,
        "status": "failed",
        "started_at": now - timedelta(seconds=2),
        "finished_at": now,
        "duration": timedelta(seconds=2),
        "error": "RuntimeError: the disk is on fire",
    }
    values.update(fields)
    return CleanupRun.objects.create(schedule=schedule, **values)


# Alerts from real runs: the engine, a worker, a failing task ------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_failure_streak_and_the_recovery_reach_the_schedules_and_the_sites_webhooks(
    worker, make_schedule, hook, settings
):
    settings.ALERT_WEBHOOKS = [hook.url("/site")]
    schedule = make_schedule(
        task="testapp_flaky",
        params={"failures": 1},
        interval=timedelta(seconds=1),
        max_iterations=2,
        alert_webhooks=[hook.url("/schedule")],
    )
    FLAKY_FAILURES.pop(str(schedule.pk), None)
    control.start_schedule(schedule)

    for path in ("/schedule", "/site"):
        wait_until(lambda path=path: "recovered" in hook.events(path), timeout=30)
        assert hook.events(path) == ["failure_streak_started", "recovered"]
    failed, succeeded = runs_of(schedule)
    assert (failed.status, succeeded.status) == ("failed", "succeeded")

    failing = hook.received("/schedule")[0]
    assert failing["headers"]["Content-Type"] == "application/json"
    body = failing["body"]
    assert body["event"] == "failure_streak_started"
    assert body["schedule"] == {
        "id": schedule.pk,
        "name": schedule.name,
        "task": "testapp_flaky",
        "url": f"{SITE}/schedules/{schedule.pk}/",
    }
    assert body["run"]["id"] == failed.pk
    assert body["run"]["iteration"] == 1
    assert body["run"]["status"] == "failed"
    assert body["run"]["started_at"] == failed.started_at.isoformat()
    assert body["error"] == "RuntimeError: flaky failure 1"
    assert body["url"] == f"{SITE}/runs/{failed.pk}/"
    assert body["consecutive_failures"] == 1
    assert hook.received("/site")[0]["body"] == body  # the same alert, site-wide

    recovered = hook.received("/schedule")[1]["body"]
    assert recovered["run"]["id"] == succeeded.pk
    assert recovered["run"]["status"] == "succeeded"
    assert recovered["url"] == f"{SITE}/runs/{succeeded.pk}/"
    assert recovered["error"] == ""
    assert "recovered" in recovered["summary"]

    rows = wait_until(lambda: len(delivered_rows(schedule)) == 4 and delivered_rows(schedule))
    assert {(r.event, r.site_wide, r.status, r.attempts) for r in rows} == {
        ("failure_streak_started", False, "delivered", 1),
        ("failure_streak_started", True, "delivered", 1),
        ("recovered", False, "delivered", 1),
        ("recovered", True, "delivered", 1),
    }
    assert {r.target for r in rows} == {f"http://127.0.0.1:{hook.port}/…"}


@pytest.mark.django_db(transaction=True)
def test_pausing_after_failures_alerts_once_per_streak_and_then_the_pause(
    worker, durable_client, make_schedule, hook, settings
):
    settings.CLEANUP_SITE_URL = ""  # no site address: the link is the page's path
    schedule = make_schedule(
        task="testapp_always_fails",
        params={},
        interval=timedelta(seconds=1),
        pause_after_failures=3,
        alert_webhooks=[hook.url("/hook")],
    )
    control.start_schedule(schedule)
    durable_client.wait_for_orchestration_completion(schedule.instance_id, timeout=30)
    assert alerts.flush(20)

    runs = runs_of(schedule)
    assert [r.status for r in runs] == ["failed"] * 3
    assert hook.events("/hook") == ["failure_streak_started", "paused_after_failures"]
    first, paused = (p["body"] for p in hook.received("/hook"))
    assert first["run"]["iteration"] == 1
    assert first["url"] == f"/runs/{runs[0].pk}/"
    assert paused["run"]["iteration"] == 3
    assert paused["consecutive_failures"] == 3
    assert paused["error"] == "RuntimeError: the disk is on fire"
    assert paused["url"] == f"/runs/{runs[2].pk}/"
    assert "paused after 3 failed runs" in paused["summary"]


@pytest.mark.django_db(transaction=True)
def test_a_time_out_alerts_once_where_it_is_detected(worker, make_schedule, hook):
    schedule = make_schedule(
        params={"seconds": 2},
        interval=timedelta(seconds=30),
        max_run_seconds=1,
        alert_webhooks=[hook.url("/hook")],
    )
    control.start_schedule(schedule)

    timed_out = wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, status="timed_out").first()
    )
    # Its next run is planned once the time-out is counted as a failure: every alert of it
    # is queued by then.
    wait_until(
        lambda: CleanupSchedule.objects.filter(
            pk=schedule.pk, next_run_at__gt=timed_out.started_at + timedelta(seconds=10)
        ).exists()
    )
    assert alerts.flush(20)
    # The time-out starts a failure streak too; it is told once, as a time-out.
    assert hook.events("/hook") == ["timed_out"]
    body = hook.received("/hook")[0]["body"]
    assert body["run"]["id"] == timed_out.pk
    assert body["run"]["status"] == "timed_out"
    assert "longer than its limit of 1 s" in body["error"]
    assert body["url"] == f"{SITE}/runs/{timed_out.pk}/"


@pytest.mark.django_db(transaction=True)
def test_the_watchdog_alerts_when_it_restarts_a_stuck_schedule(
    worker, durable_client, make_schedule, hook, settings
):
    from datetime import UTC

    from cleanups.instances import fetch_runtime_states

    grace = timedelta(seconds=1)
    settings.STUCK_RUN_GRACE_SECONDS = grace.total_seconds()
    schedule = make_schedule(interval=timedelta(seconds=60), alert_webhooks=[hook.url("/hook")])
    control.start_schedule(schedule)
    wait_until(lambda: waiting(durable_client, schedule))
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        next_run_at=timezone.now() - timedelta(seconds=5)
    )
    touched = durable_client.get_orchestration_state(schedule.instance_id).last_updated_at
    wait_for_clock(touched.replace(tzinfo=UTC) + grace + timedelta(seconds=0.2))
    reconciler = Reconciler(worker="test-host:1:me", interval=0.5)
    # Pass after pass, as runworker's reconciler does, until it has seen the stall for the grace.
    wait_until(lambda: reconciler.restart_stuck(fetch_runtime_states()), interval=0.3)

    wait_until(lambda: hook.events("/hook") == ["stuck_run"])
    body = hook.received("/hook")[0]["body"]
    assert body["run"] is None  # no run of it was lost: its orchestration made no progress
    assert "made no progress" in body["error"]
    assert body["url"] == f"{SITE}/schedules/{schedule.pk}/"


@pytest.mark.django_db(transaction=True)
def test_a_webhook_that_keeps_failing_never_holds_up_the_schedule_and_shows_on_its_page(
    worker, make_schedule, hook, admin_client, settings, caplog
):
    settings.ALERT_WEBHOOK_TIMEOUT = 30.0  # the receiver holds its answers till told
    hook.plans["/down"] = [500]
    hook.holds["/down"] = threading.Event()
    schedule = make_schedule(
        task="testapp_always_fails",
        params={},
        interval=timedelta(seconds=1),
        alert_webhooks=[hook.url("/down?token=s3cr3t")],
    )
    caplog.set_level(logging.INFO, logger="cleanups.alerts")
    control.start_schedule(schedule)

    wait_until(lambda: hook.received("/down"), timeout=20)
    # The first attempt hangs: the schedule runs on meanwhile, on time.
    wait_until(lambda: len(runs_of(schedule)) >= 3, timeout=20)
    assert len(hook.received("/down")) == 1
    assert not delivered_rows(schedule)
    hook.holds["/down"].set()

    row = wait_until(lambda: delivered_rows(schedule, status="failed"), timeout=20)[0]
    assert len(hook.received("/down")) == 3  # three attempts, then it gives up
    assert hook.received("/down")[0]["query"] == "token=s3cr3t"
    assert (row.event, row.attempts, row.http_status) == ("failure_streak_started", 3, 500)
    assert row.error == "HTTP 500 Internal Server Error"
    assert row.target == f"http://127.0.0.1:{hook.port}/…"
    assert row.run_pk == runs_of(schedule)[0].pk
    runs_before = len(runs_of(schedule))
    wait_until(lambda: len(runs_of(schedule)) > runs_before, timeout=20)  # it still runs
    control.terminate_schedule(schedule)

    failure_lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "cleanups.alerts" and r.levelno == logging.WARNING
    ]
    assert failure_lines == [
        f"alert failure_streak_started of schedule {schedule.name} to "
        f"http://127.0.0.1:{hook.port}/… failed after 3 attempt(s): HTTP 500 Internal Server Error"
    ]
    html = admin_client.get(reverse("cleanups:schedule_detail", args=[schedule.pk])).content
    html = html.decode()
    assert "Alert deliveries that failed" in html
    assert "HTTP 500 Internal Server Error" in html
    assert f"http://127.0.0.1:{hook.port}/…" in html
    assert f'href="/runs/{row.run_pk}/"' in html
    assert "s3cr3t" not in html and "s3cr3t" not in caplog.text


# Delivery: retries, redirects, the SSRF rule at delivery time -------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_server_error_is_retried_with_backoff_and_then_delivered(make_schedule, hook):
    hook.plans["/flaky"] = [500, 503, 200]
    schedule = make_schedule(alert_webhooks=[hook.url("/flaky")])
    run = fake_run(schedule)

    alerts.send(alerts.FAILING, schedule, run)
    assert alerts.flush(20)

    assert len(hook.received("/flaky")) == 3
    (row,) = delivered_rows(schedule)
    assert (row.status, row.attempts, row.http_status, row.error) == ("delivered", 3, 200, "")
    assert (row.run_pk, row.iteration) == (run.pk, 1)


@pytest.mark.django_db(transaction=True)
def test_a_client_error_or_a_redirect_is_final_not_retried(make_schedule, hook):
    hook.plans["/gone"] = [404]
    hook.plans["/moved"] = [302]
    schedule = make_schedule(alert_webhooks=[hook.url("/gone"), hook.url("/moved")])

    alerts.send(alerts.FAILING, schedule, fake_run(schedule))
    assert alerts.flush(20)

    assert len(hook.received("/gone")) == len(hook.received("/moved")) == 1
    errors = sorted(r.error for r in delivered_rows(schedule, status="failed", attempts=1))
    assert errors == ["HTTP 302 Found (redirects are not followed)", "HTTP 404 Not Found"]
    assert not [p for p in hook.received() if p["path"] == "/elsewhere"]


@pytest.mark.django_db(transaction=True)
def test_a_refused_connection_is_retried_then_recorded(make_schedule, hook, settings):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    schedule = make_schedule(alert_webhooks=[url])
    alerts.send(alerts.RECOVERED, schedule, fake_run(schedule, status="succeeded", error=""))
    assert alerts.flush(20)

    (row,) = delivered_rows(schedule)
    assert row.status == "failed" and row.attempts == 3
    assert "ConnectionRefusedError" in row.error
    assert "nobody-listens" not in row.error


@pytest.mark.django_db(transaction=True)
def test_at_delivery_an_internal_address_is_refused_unless_allowed_or_site_wide(
    make_schedule, hook, settings
):
    settings.ALERT_WEBHOOK_ALLOWED_HOSTS = []
    settings.ALERT_WEBHOOKS = [hook.url("/site")]  # the deployer's: trusted
    # Saved without the form (as if its host had resolved to a public address then).
    schedule = make_schedule(
        alert_webhooks=[hook.url("/own"), f"http://localhost:{hook.port}/own-by-name"]
    )

    alerts.send(alerts.FAILING, schedule, fake_run(schedule))
    assert alerts.flush(20)

    assert [p["path"] for p in hook.received()] == ["/site"]
    refused = delivered_rows(schedule, status="failed")
    assert len(refused) == 2
    for row in refused:
        assert row.attempts == 1  # never retried
        assert row.error.startswith("Refused: ")
        assert "internal address" in row.error and "ALERT_WEBHOOK_ALLOWED_HOSTS" in row.error
    (site,) = delivered_rows(schedule, status="delivered")
    assert site.site_wide

    settings.ALERT_WEBHOOK_ALLOWED_HOSTS = ["localhost"]
    alerts.send(alerts.FAILING, schedule, fake_run(schedule, iteration=2))
    assert alerts.flush(20)
    assert sorted(p["path"] for p in hook.received()) == ["/own-by-name", "/site", "/site"]


@pytest.mark.django_db(transaction=True)
def test_only_the_newest_deliveries_are_kept_per_schedule(make_schedule, hook, monkeypatch):
    monkeypatch.setattr(alerts.delivery, "DELIVERIES_KEPT", 3)
    schedule = make_schedule(alert_webhooks=[hook.url("/hook")])
    run = fake_run(schedule)
    for _ in range(5):
        alerts.send(alerts.FAILING, schedule, run)
    assert alerts.flush(20)
    assert len(hook.received("/hook")) == 5
    assert AlertDelivery.objects.filter(schedule=schedule).count() == 3


def test_nothing_is_queued_without_a_webhook():
    schedule = CleanupSchedule(pk=1, name="quiet", task="sample", alert_webhooks=[])
    alerts.send(alerts.FAILING, schedule)
    assert alerts.delivery._pending == 0


# Bodies ------------------------------------------------------------------------------------


def sample_body(settings: Any) -> dict[str, Any]:
    settings.CLEANUP_SITE_URL = "https://cleanups.example.com/"
    schedule = CleanupSchedule(pk=7, name="nightly <sessions> & co", task="expired_sessions")
    schedule.consecutive_failures = 1
    now = timezone.now()
    run = CleanupRun(
        pk=42,
        schedule=schedule,
        iteration=3,
        status="failed",
        task="expired_sessions",
        started_at=now,
        finished_at=now,
        duration=timedelta(seconds=1.5),
        error="OperationalError: database is locked <again>",
    )
    return alerts.payload(alerts.FAILING, schedule, run)


def test_the_generic_body(settings):
    body = sample_body(settings)
    assert body["event"] == "failure_streak_started"
    assert body["schedule"] == {
        "id": 7,
        "name": "nightly <sessions> & co",
        "task": "expired_sessions",
        "url": "https://cleanups.example.com/schedules/7/",
    }
    assert body["run"]["id"] == 42 and body["run"]["duration_seconds"] == 1.5
    assert body["error"] == "OperationalError: database is locked <again>"
    assert body["url"] == "https://cleanups.example.com/runs/42/"
    assert alerts.body_for("https://alerts.example.com/hook", body) is body
    json.dumps(body)  # JSON through and through


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
        "https://HOOKS.SLACK.COM/services/T000/B000/XXXXXXXX",
    ],
)
def test_a_slack_webhook_gets_slacks_text(settings, url):
    sent = alerts.body_for(url, sample_body(settings))
    assert set(sent) == {"text"}
    text = sent["text"]
    assert text.startswith(":rotating_light: *Cleanup schedule “nightly &lt;sessions&gt; &amp; co”")
    assert "```OperationalError: database is locked &lt;again&gt;```" in text
    assert text.endswith("<https://cleanups.example.com/runs/42/|Open the run>")


def test_a_teams_webhook_gets_a_message_card(settings):
    url = "https://contoso.webhook.office.com/webhookb2/abc@def/IncomingWebhook/123/456"
    card = alerts.body_for(url, sample_body(settings))
    assert card["@type"] == "MessageCard"
    assert card["@context"] == "http://schema.org/extensions"
    assert card["summary"].startswith("Cleanup schedule “nightly <sessions> & co” is failing")
    assert "&lt;sessions&gt;" in card["title"]
    assert card["text"] == "OperationalError: database is locked &lt;again&gt;"
    assert card["potentialAction"] == [
        {
            "@type": "OpenUri",
            "name": "Open the run",
            "targets": [{"os": "default", "uri": "https://cleanups.example.com/runs/42/"}],
        }
    ]


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com.example.net/services/x",
        "https://example.net/hooks.slack.com",
        "https://notwebhook.office.com/x",
        "https://webhook.office.com.example.net/x",
    ],
)
def test_look_alike_hosts_get_the_generic_body(settings, url):
    body = sample_body(settings)
    assert alerts.body_for(url, body) is body


def test_without_a_site_address_slack_and_teams_get_the_path_as_text(settings):
    settings.CLEANUP_SITE_URL = ""
    schedule = CleanupSchedule(pk=7, name="n", task="sample")
    body = alerts.payload(alerts.STUCK, schedule, None, error="Restarted: stuck.")
    assert body["url"] == "/schedules/7/" and body["run"] is None
    assert alerts.slack_body(body)["text"].endswith("Open the schedule: /schedules/7/")
    assert "potentialAction" not in alerts.teams_body(body)


# The SSRF rule and the admin form ----------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "::",
        "fe80::1%eth0",
        "fd00::1",
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",
    ],
)
def test_internal_addresses(address):
    assert webhooks.is_internal(address)


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address):
    assert not webhooks.is_internal(address)


def test_a_webhook_is_shown_and_logged_without_its_path_or_query():
    assert (
        webhooks.redact("https://hooks.slack.com/services/T/B/secret")
        == "https://hooks.slack.com/…"
    )
    assert webhooks.redact("http://u:pw@[::1]:8080/x?k=v") == "http://[::1]:8080/…"
    assert webhooks.redact("https://example.com") == "https://example.com/"


def add_form(admin_client, webhooks: str):
    return admin_client.post(reverse(ADD), form_data(alert_webhooks=webhooks))


def webhook_errors(response) -> str:
    assert response.status_code == 200, "an invalid form must be shown again, not saved"
    return " ".join(response.context["adminform"].form.errors.get("alert_webhooks", []))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("webhooks", "message"),
    [
        ("ftp://example.com/hook", "only http:// and https:// webhooks are allowed"),
        ("file:///etc/passwd", "only http:// and https:// webhooks are allowed"),
        ("hooks.example.com/no-scheme", "only http:// and https:// webhooks are allowed"),
        ("http://", "not a valid URL"),
        ("https://exa mple.com/x", "not a valid URL"),
        ("http://127.0.0.1:8000/hook", "127.0.0.1 is an internal address"),
        ("http://localhost/hook", "is an internal address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is an internal address"),
        ("http://10.0.0.5/hook", "10.0.0.5 is an internal address"),
        ("http://[::1]/hook", "::1 is an internal address"),
    ],
)
def test_the_admin_form_refuses_bad_and_internal_webhooks(
    admin_client, settings, webhooks, message
):
    settings.ALERT_WEBHOOK_ALLOWED_HOSTS = []
    errors = webhook_errors(add_form(admin_client, webhooks))
    assert message in errors
    assert not CleanupSchedule.objects.exists()


@pytest.mark.django_db
def test_the_admin_form_takes_one_webhook_per_line_at_most_five(
    admin_client, settings, engine_port
):
    settings.ALERT_WEBHOOK_ALLOWED_HOSTS = []
    six = "\n".join(f"https://93.184.215.14/hook/{n}" for n in range(6))
    assert "At most 5 webhooks" in webhook_errors(add_form(admin_client, six))

    # A public address, and 127.0.0.1 because the site allows it; blank lines and repeats go.
    settings.ALERT_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    given = (
        "https://93.184.215.14/hook\r\n\r\nhttp://127.0.0.1:9/local\nhttps://93.184.215.14/hook\n"
    )
    response = add_form(admin_client, given)
    assert response.status_code == 302, webhook_errors(response)
    schedule = CleanupSchedule.objects.get()
    assert schedule.alert_webhooks == ["https://93.184.215.14/hook", "http://127.0.0.1:9/local"]

    change = admin_client.get(reverse("admin:cleanups_cleanupschedule_change", args=[schedule.pk]))
    assert (
        "https://93.184.215.14/hook\nhttp://127.0.0.1:9/local</textarea>" in change.content.decode()
    )
    page = admin_client.get(reverse("cleanups:schedule_detail", args=[schedule.pk])).content
    assert "<code>https://93.184.215.14/…</code>" in page.decode()


def test_the_alert_settings_are_checked(settings):
    from cleanups.checks import check_alert_settings, check_setting_values

    assert check_alert_settings() == []
    settings.ALERT_WEBHOOKS = ["ftp://example.com/x"]
    settings.ALERT_WEBHOOK_ATTEMPTS = 0
    settings.CLEANUP_SITE_URL = "cleanups.example.com"
    settings.ALERT_WEBHOOK_TIMEOUT = 0
    messages = [error.msg for error in check_alert_settings()]
    assert messages == [
        "ALERT_WEBHOOK_ATTEMPTS is 0: it must be a whole number of 1 or more.",
        "ALERT_WEBHOOKS lists ftp://example.com/…, which is not an http:// or https:// URL.",
        "CLEANUP_SITE_URL is 'cleanups.example.com': it must be empty or the site's address, "
        "e.g. https://cleanups.example.com.",
    ]
    assert "ALERT_WEBHOOK_TIMEOUT is 0: it must be a number of seconds more than 0." in [
        error.msg for error in check_setting_values()
    ]


@pytest.mark.django_db(transaction=True)
def test_a_schedule_declared_in_code_lists_its_webhooks_and_they_are_checked(settings):
    from cleanups import declared

    settings.ALERT_WEBHOOK_ALLOWED_HOSTS = []
    hooks = ["https://93.184.215.14/a", "https://93.184.215.14/b"]
    definition = {"task": "sample", "interval": "01:00:00", "state": "stopped"}
    settings.CLEANUP_SCHEDULES = {"nightly": {**definition, "alert_webhooks": hooks}}
    declared.sync()
    assert CleanupSchedule.objects.get(name="nightly").alert_webhooks == hooks
    assert declared.sync().plan.changes == []  # the same list is no change

    settings.CLEANUP_SCHEDULES = {"nightly": {**definition, "alert_webhooks": ["http://10.0.0.1/"]}}
    with pytest.raises(declared.DeclarationError, match=r"10\.0\.0\.1 is an internal address"):
        declared.sync()


@pytest.mark.django_db(transaction=True)
def test_a_held_run_is_alerted_to_the_schedules_webhooks(make_schedule, hook):
    old = timezone.now() - timedelta(days=40)
    Event.objects.bulk_create([Event(created_at=old) for _ in range(1500)])
    schedule = make_schedule(
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        task="delete_old_rows",
        params={"model": "testapp.Event", "field": "created_at", "older_than_days": 30},
        interval=timedelta(hours=1),
        alert_webhooks=[hook.url("/hook")],
    )
    execute_iteration(schedule.pk, 1)
    held = CleanupRun.objects.get(schedule=schedule, iteration=1)
    assert held.status == "held"
    assert alerts.flush(20)
    assert hook.events("/hook") == ["run_held"]
    body = hook.received("/hook")[0]["body"]
    assert body["run"]["id"] == held.pk and body["run"]["status"] == "held"
    assert "is held for approval and deleted nothing" in body["summary"]
    assert body["url"] == f"{SITE}/runs/{held.pk}/"
