"""The retention backlog (cleanups.runs.backlog): recorded on the run and the schedule, alerted
once per crossing of CLEANUP_BACKLOG_ALERT_SECONDS (to a real local webhook and by mail), and
shown on the dashboard, the schedule and run pages, /metrics and the health checks."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from cleanups import alerts
from cleanups.durable.reconciler import Reconciler
from cleanups.health import run_checks
from cleanups.models import AlertDelivery, CleanupRun, CleanupSchedule
from cleanups.runs import backlog as backlog_module
from cleanups.runs.backlog import describe, of_schedule, record_backlog
from cleanups.runs.execute import execute_iteration
from cleanups.runs.worker import worker_id
from tests.conftest import wait_until
from tests.test_alerts import Hook
from tests.test_metrics import parse, value
from tests.testapp.models import Event

DAY = 86_400.0
HOUR = 3_600.0
SITE = "http://cleanups.test"


def measured(seconds: float, rows: int = 0, capped: bool = False) -> dict[str, Any]:
    """What the deleter puts in ``ctx.backlog``."""
    return {"seconds": seconds, "rows": rows, "capped": capped}


def finished_run(schedule: CleanupSchedule, iteration: int = 1, **fields: Any) -> CleanupRun:
    now = timezone.now()
    values: dict[str, Any] = {
        "task": "delete_old_rows",
        "status": "succeeded",
        "started_at": now - timedelta(seconds=3),
        "finished_at": now,
        "duration": timedelta(seconds=3),
        "items_deleted": 100_000,
    }
    values.update(fields)
    return CleanupRun.objects.create(schedule=schedule, iteration=iteration, **values)


def set_backlog(schedule: CleanupSchedule, seconds: float | None, rows: int | None) -> None:
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        backlog_seconds=seconds, backlog_rows=rows, backlog_at=timezone.now()
    )


# describe() ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "rows", "capped", "phrase"),
    [
        (0, 0, False, "caught up"),
        (3 * DAY, 123_456, False, "3 days behind, about 120,000 rows"),
        (2 * HOUR, 1_000_000, True, "2 hours behind, more than 1,000,000 rows"),
        (1.5 * DAY, 120_000, False, "1.5 days behind, 120,000 rows"),
        (36 * HOUR + 60, 1_250, False, "1.5 days behind, about 1,300 rows"),
        (45, 1, False, "45 seconds behind, 1 row"),
        (90, 999, False, "1.5 minutes behind, 999 rows"),
        (59.97 * 60, 1_000, False, "1 hour behind, 1,000 rows"),
        (0.2, 3, False, "under a second behind, 3 rows"),
        (400 * DAY, 5_000, False, "400 days behind, 5,000 rows"),
        (12 * HOUR, None, False, "12 hours behind"),
    ],
)
def test_describe_reads_as_people_say_it(seconds, rows, capped, phrase):
    assert describe(seconds, rows, capped) == phrase


# record_backlog: the run and the schedule -----------------------------------------------------


@pytest.mark.django_db
def test_record_backlog_writes_the_runs_details_and_the_schedule(make_schedule, settings):
    settings.CLEANUP_BACKLOG_ALERT_SECONDS = 0  # no alert in this test
    schedule = make_schedule(name="events", task="delete_old_rows")
    editor, edited = schedule.changed_by_id, schedule.updated_at
    targets = {"targets": {"testapp.Event": {"items": 100_000, "bytes": 0}}}
    run = finished_run(schedule, details=targets)
    # Written meanwhile by the deleter (its table sizes): the merge keeps it.
    tables = {"testapp.Event": {"before": 10, "after": 4, "analyzed": True, "vacuumed": False}}
    CleanupRun.objects.filter(pk=run.pk).update(details={**targets, "tables": tables})

    record_backlog(schedule, run, measured(3 * DAY, 123_456))

    stored = CleanupRun.objects.get(pk=run.pk).details
    assert stored == {
        **targets,
        "tables": tables,
        "backlog": {"seconds": 3 * DAY, "rows": 123_456, "capped": False},
    }
    assert run.details == stored
    schedule.refresh_from_db()
    assert (schedule.backlog_seconds, schedule.backlog_rows) == (3 * DAY, 123_456)
    assert timezone.now() - schedule.backlog_at < timedelta(seconds=10)
    assert (schedule.changed_by_id, schedule.updated_at) == (editor, edited)  # never save()d
    assert of_schedule(schedule).phrase == "3 days behind, about 120,000 rows"

    record_backlog(schedule, run, measured(0))  # caught up
    schedule.refresh_from_db()
    assert (schedule.backlog_seconds, schedule.backlog_rows) == (0, 0)
    assert of_schedule(schedule).phrase == "caught up"


@pytest.mark.django_db
def test_no_backlog_or_one_that_is_no_measurement_changes_nothing(make_schedule):
    schedule = make_schedule(name="files", task="sample")
    run = finished_run(schedule, task="sample", details={"targets": {}})
    for backlog in (None, {"rows": 3}, {"seconds": "soon"}, {"seconds": float("nan")}, [1]):
        record_backlog(schedule, run, backlog)  # type: ignore[arg-type]
    assert CleanupRun.objects.get(pk=run.pk).details == {"targets": {}}
    schedule.refresh_from_db()
    assert (schedule.backlog_seconds, schedule.backlog_rows, schedule.backlog_at) == (None,) * 3
    assert of_schedule(schedule) is None


@pytest.mark.django_db
def test_a_database_error_writes_neither_place_and_never_raises(make_schedule, monkeypatch):
    schedule = make_schedule(name="events", task="delete_old_rows")
    run = finished_run(schedule, details={"targets": {}})

    def refuse(*args: Any) -> bool:
        raise DatabaseError("database is locked")

    monkeypatch.setattr(backlog_module, "_update_schedule", refuse)
    record_backlog(schedule, run, measured(3 * DAY, 10))  # logged, not raised
    assert CleanupRun.objects.get(pk=run.pk).details == {"targets": {}}  # rolled back
    assert run.details == {"targets": {}}
    assert CleanupSchedule.objects.get(pk=schedule.pk).backlog_seconds is None


# The alert: once per crossing ------------------------------------------------------------------


@pytest.fixture
def hook(settings):
    settings.ALERT_WEBHOOKS = []
    settings.ALERT_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]  # the test's own local receiver
    settings.ALERT_WEBHOOK_BACKOFF_SECONDS = 0.05
    settings.CLEANUP_SITE_URL = SITE
    receiver = Hook()
    yield receiver
    assert alerts.flush(30), "alerts still queued at the end of the test"
    receiver.close()


@pytest.mark.django_db(transaction=True)
def test_the_alert_goes_once_per_crossing(make_schedule, hook, settings, mailoutbox):
    settings.CLEANUP_BACKLOG_ALERT_SECONDS = HOUR
    schedule = make_schedule(
        name="events",
        task="delete_old_rows",
        alert_webhooks=[hook.url("/hook")],
        notify_email="dba@example.com",
    )

    def record(iteration: int, seconds: float, rows: int = 0, capped: bool = False) -> None:
        run = finished_run(schedule, iteration)
        record_backlog(schedule, run, measured(seconds, rows, capped))
        assert alerts.flush(20)

    record(1, 600, 50)  # under
    assert hook.events("/hook") == [] and mailoutbox == []
    record(2, 2 * HOUR, 123_456)  # over: the alert
    assert hook.events("/hook") == ["backlog"]
    record(3, 3 * HOUR, 200_000)  # still over: nothing more
    record(4, HOUR, 10)  # at the threshold is not over it
    assert hook.events("/hook") == ["backlog"]
    record(5, 5 * HOUR, 1_000_000, capped=True)  # over again: a new crossing
    assert hook.events("/hook") == ["backlog", "backlog"]

    first, second = (post["body"] for post in hook.received("/hook"))
    crossed = CleanupRun.objects.get(schedule=schedule, iteration=2)
    assert first["event"] == "backlog"
    assert first["summary"] == (
        "Cleanup schedule “events” is 2 hours behind its retention policy "
        "(about 120,000 rows left)."
    )
    assert first["run"]["id"] == crossed.pk and first["url"] == f"{SITE}/runs/{crossed.pk}/"
    assert first["schedule"]["url"] == f"{SITE}/schedules/{schedule.pk}/"
    assert second["summary"] == (
        "Cleanup schedule “events” is 5 hours behind its retention policy "
        "(more than 1,000,000 rows left)."
    )

    assert [mail.to for mail in mailoutbox] == [["dba@example.com"]] * 2
    assert (
        mailoutbox[0].subject == "Cleanup schedule “events” is 2 hours behind its retention policy"
    )
    assert "about 120,000 rows left" in mailoutbox[0].body
    assert "The alert threshold is 1 hour" in mailoutbox[0].body
    assert f"{SITE}/schedules/{schedule.pk}/" in mailoutbox[0].body

    rows = wait_until(
        lambda: len(found := list(AlertDelivery.objects.filter(schedule=schedule))) == 2 and found
    )
    assert {(row.event, row.status) for row in rows} == {("backlog", "delivered")}
    assert {row.iteration for row in rows} == {2, 5}


@pytest.mark.django_db(transaction=True)
def test_a_first_measurement_over_alerts_and_none_while_the_setting_is_0(
    make_schedule, hook, settings, mailoutbox
):
    settings.CLEANUP_BACKLOG_ALERT_SECONDS = 0  # never
    quiet = make_schedule(name="quiet", alert_webhooks=[hook.url("/quiet")])
    record_backlog(quiet, finished_run(quiet), measured(400 * DAY, 5_000))
    settings.CLEANUP_BACKLOG_ALERT_SECONDS = DAY
    loud = make_schedule(name="loud", alert_webhooks=[hook.url("/loud")])
    record_backlog(loud, finished_run(loud), measured(2 * DAY, 5_000))  # unknown before: over
    assert alerts.flush(20)
    assert hook.events("/quiet") == [] and hook.events("/loud") == ["backlog"]
    assert len(mailoutbox) == 0  # no notify_email and no ADMINS: nobody to mail
    # quiet was measured while alerts were off: it is over now, and stays so unalerted.
    record_backlog(quiet, finished_run(quiet, 2), measured(401 * DAY, 5_000))
    assert alerts.flush(20)
    assert hook.events("/quiet") == []


# The pages -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboard_shows_each_schedules_backlog_highlighted_when_over(
    admin_client, engine_port, make_schedule, settings
):
    settings.CLEANUP_BACKLOG_ALERT_SECONDS = DAY
    behind = make_schedule(name="behind")
    set_backlog(behind, 3 * DAY, 123_456)
    near = make_schedule(name="near")
    set_backlog(near, 2 * HOUR, 1_000_000)  # at the cap: counted no further
    done = make_schedule(name="done")
    set_backlog(done, 0, 0)
    make_schedule(name="unmeasured")

    html = admin_client.get(reverse("cleanups:dashboard")).content.decode()
    assert '<th scope="col">Backlog</th>' in html
    cells = {
        name: html.split(f">{name}</a>", 1)[1].split("</tr>", 1)[0]
        for name in ("behind", "near", "done", "unmeasured")
    }
    assert 'class="backlog backlog-over"' in cells["behind"]
    assert "3 days behind, about 120,000 rows</span>" in cells["behind"]
    assert '<span class="backlog" ' in cells["near"]
    assert "2 hours behind, more than 1,000,000 rows</span>" in cells["near"]
    assert "caught up</span>" in cells["done"]
    assert cells["unmeasured"].rstrip().endswith("<td></td>")

    settings.CLEANUP_BACKLOG_ALERT_SECONDS = 0  # never over
    assert "backlog-over" not in admin_client.get(reverse("cleanups:dashboard")).content.decode()


@pytest.mark.django_db
def test_the_dashboards_backlog_costs_no_query_per_row(admin_client, engine_port, make_schedule):
    url = reverse("cleanups:dashboard")
    set_backlog(make_schedule(name="s00"), DAY, 10)
    admin_client.get(url)
    with CaptureQueriesContext(connection) as small:
        admin_client.get(url)
    for n in range(1, 30):
        set_backlog(make_schedule(name=f"s{n:02}"), n * HOUR, n * 1000)
    with CaptureQueriesContext(connection) as large:
        html = admin_client.get(url).content.decode()
    assert len(large) == len(small)
    assert html.count('<span class="backlog') == 30


@pytest.mark.django_db
def test_the_schedule_page_shows_its_backlog(admin_client, engine_port, make_schedule, settings):
    settings.CLEANUP_BACKLOG_ALERT_SECONDS = DAY
    schedule = make_schedule(name="events")
    url = reverse("cleanups:schedule_detail", args=[schedule.pk])
    assert "Retention backlog" not in admin_client.get(url).content.decode()  # not measured

    set_backlog(schedule, 3 * DAY, 123_456)
    html = admin_client.get(url).content.decode()
    assert "<dt>Retention backlog</dt>" in html
    assert '<span class="backlog backlog-over">3 days behind, about 120,000 rows</span>' in html
    assert "(measured " in html


@pytest.mark.django_db
def test_the_run_page_shows_the_backlog_the_hold_backs_and_the_table_sizes(
    admin_client, make_schedule, settings
):
    settings.CLEANUP_BACKLOG_ALERT_SECONDS = DAY
    schedule = make_schedule(name="events")
    mib = 1024 * 1024
    run = finished_run(
        schedule,
        throttled_seconds=12.5,
        message="Deleted 100,000 rows; window closed, 1,234 left.",
        details={
            "targets": {"testapp.Event": {"items": 100_000, "bytes": 0}},
            "backlog": {"seconds": 2 * HOUR, "rows": 1_234, "capped": False},
            "tables": {
                "testapp.Event": {
                    "before": 10 * mib,
                    "after": 4 * mib,
                    "analyzed": True,
                    "vacuumed": True,
                },
                "testapp.Note": {"before": None, "after": None, "analyzed": True},
            },
        },
    )
    html = admin_client.get(run.get_absolute_url()).content.decode()
    assert "<dt>Backlog after</dt>" in html
    assert '<span class="backlog">2 hours behind, about 1,200 rows</span>' in html
    assert "Held back 12.50 s between batches" in html
    assert "window closed, 1,234 left." in html
    assert "<dt>Space freed</dt><dd>6.0\xa0MB</dd>" in html
    assert (
        '<tr><td>testapp.Event</td><td class="number">10.0\xa0MB</td>'
        '<td class="number">4.0\xa0MB</td><td class="number">6.0\xa0MB</td>'
        "<td>ANALYZE, VACUUM</td></tr>"
    ) in html
    assert (
        '<tr><td>testapp.Note</td><td class="number">–</td><td class="number">–</td>'
        '<td class="number">–</td><td>ANALYZE</td></tr>'
    ) in html
    live = admin_client.get(run.get_absolute_url(), {"live": "1"}).json()["html"]
    assert "2 hours behind, about 1,200 rows" in live

    plain = finished_run(schedule, 2, details={})  # a task that measures none, never throttled
    html = admin_client.get(plain.get_absolute_url()).content.decode()
    assert "Backlog after" not in html and "Held back" not in html
    assert "Table sizes" not in html and "Space freed" not in html


# /metrics and the health checks ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_metrics_have_a_gauge_per_measured_schedule_in_no_more_queries(
    engine, admin_client, make_schedule
):
    def scrape() -> tuple[dict, int]:
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(reverse("cleanups:metrics"))
        assert response.status_code == 200
        return parse(response.content.decode()), len(captured)

    make_schedule(name="unmeasured")
    _, before = scrape()
    set_backlog(make_schedule(name="behind"), 3 * DAY, 123_456)
    set_backlog(make_schedule(name="done"), 0, 0)
    streak = make_schedule(name="streak", consecutive_failures=2)
    samples, after = scrape()

    assert after == before
    assert value(samples, "cleanups_retention_backlog_seconds", schedule="behind") == 3 * DAY
    assert value(samples, "cleanups_retention_backlog_rows", schedule="behind") == 123_456
    assert value(samples, "cleanups_retention_backlog_seconds", schedule="done") == 0
    assert value(samples, "cleanups_retention_backlog_seconds", schedule="unmeasured") is None
    assert value(samples, "cleanups_retention_backlog_seconds", schedule=streak.name) is None
    assert value(samples, "cleanups_schedule_consecutive_failures", schedule="streak") == 2
    assert value(samples, "cleanups_schedule_consecutive_failures", schedule="behind") is None


@pytest.mark.django_db(transaction=True)
def test_health_warns_of_schedules_behind_and_stays_ok(
    engine, client, admin_client, make_schedule, settings, capsys
):
    Reconciler(worker_id(), 5.0).beat()
    settings.CLEANUP_BACKLOG_ALERT_SECONDS = DAY
    set_backlog(make_schedule(name="fine"), HOUR, 10)

    def healthz(some_client: Any) -> tuple[int, dict[str, Any]]:
        response = some_client.get(reverse("cleanups:healthz"), {"verbose": "1"})
        return response.status_code, response.json()

    status, payload = healthz(admin_client)
    assert (status, payload["status"], payload["checks"]["backlog"]) == (200, "ok", "ok")
    assert payload["reasons"]["backlog"] == (
        "no schedule is further behind its retention policy than 1 day "
        "(CLEANUP_BACKLOG_ALERT_SECONDS)"
    )

    set_backlog(make_schedule(name="events"), 3 * DAY, 123_456)
    set_backlog(make_schedule(name="audit"), 2 * DAY, 99)
    status, payload = healthz(admin_client)
    assert status == 200 and payload["status"] == "ok"
    assert payload["checks"]["backlog"] == "warning"
    assert {name for name, said in payload["checks"].items() if said != "ok"} == {"backlog"}
    assert payload["reasons"]["backlog"] == (
        "further behind their retention policy than 1 day (CLEANUP_BACKLOG_ALERT_SECONDS): "
        "events (3 days), audit (2 days)"
    )
    assert healthz(client)[1] == {  # anyone: the statuses only
        "status": "ok",
        "checks": {**dict.fromkeys(payload["checks"], "ok"), "backlog": "warning"},
    }

    call_command("healthcheck")  # exits 0: no SystemExit
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in table if line.startswith("backlog")] == [
        ["backlog", "warning"]
    ]
    assert table[-1] == "status: ok"
    call_command("healthcheck", "--json")
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "ok" and printed["checks"]["backlog"] == "warning"

    for n in range(6):
        set_backlog(make_schedule(name=f"more-{n}"), 2 * DAY + n, 1)
    reason = {check.name: check for check in run_checks().checks}["backlog"].reason
    assert reason.count("(") == 1 + 5 and reason.endswith(" and more")

    settings.CLEANUP_BACKLOG_ALERT_SECONDS = 0  # off
    status, payload = healthz(admin_client)
    assert (status, payload["checks"]["backlog"]) == (200, "ok")
    assert payload["reasons"]["backlog"] == "not checked (CLEANUP_BACKLOG_ALERT_SECONDS is 0)"


# A real run of delete_old_rows, capped per run -------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_real_runs_record_the_backlog_they_leave_and_alert_once(
    make_schedule, hook, settings, admin_client
):
    settings.CLEANUP_BACKLOG_ALERT_SECONDS = DAY
    now = timezone.now()
    # 500 rows past a 30-day policy, one a minute from 40 days back: a run may take 200.
    Event.objects.bulk_create(
        Event(created_at=now - timedelta(days=40) + timedelta(minutes=n)) for n in range(500)
    )
    schedule = make_schedule(
        name="events",
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        task="delete_old_rows",
        params={"model": "testapp.Event", "field": "created_at", "older_than_days": 30},
        interval=timedelta(hours=1),
        max_rows_per_run=200,
        alert_webhooks=[hook.url("/hook")],
    )

    def run(iteration: int) -> CleanupRun:
        execute_iteration(schedule.pk, iteration)
        assert alerts.flush(20)
        schedule.refresh_from_db()
        return CleanupRun.objects.get(schedule=schedule, iteration=iteration)

    first = run(1)
    assert (first.status, first.items_deleted) == ("succeeded", 200)
    left = first.details["backlog"]
    assert (left["rows"], left["capped"]) == (300, False)
    # The oldest left is the 201st: 40 days less 200 minutes old, 10 days less 200 minutes late.
    assert abs(left["seconds"] - (10 * DAY - 200 * 60)) < 120
    assert (schedule.backlog_seconds, schedule.backlog_rows) == (left["seconds"], 300)
    assert hook.events("/hook") == ["backlog"]

    assert run(2).details["backlog"]["rows"] == 100
    assert hook.events("/hook") == ["backlog"]  # still over: no second alert

    last = run(3)
    assert last.details["backlog"] == {"seconds": 0.0, "rows": 0, "capped": False}
    assert (schedule.backlog_seconds, schedule.backlog_rows) == (0, 0)
    assert not Event.objects.exists()
    html = admin_client.get(reverse("cleanups:schedule_detail", args=[schedule.pk])).content
    assert '<span class="backlog">caught up</span>' in html.decode()
