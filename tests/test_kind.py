"""Kind to the production database: run windows, pacing, ANALYZE/VACUUM after a big delete,
the retention backlog and a catch-up across runs, on real runs against a real database (and,
for the window's opening, the real engine)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from cleanups import control
from cleanups.cadence import CRON, FIXED_RATE, Cadence, Window
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs.execute import execute_iteration
from cleanups.tasks.throttle import ReplicaLag
from tests.conftest import run_iteration, wait_until
from tests.replica import streaming_replica  # noqa: F401
from tests.testapp.models import Event

DAY = timedelta(days=1)
Status = CleanupRun.Status
OLD_ROWS = {"model": "testapp.Event", "field": "created_at", "older_than_days": 30}
BERLIN = ZoneInfo("Europe/Berlin")


def events(count: int, age: timedelta) -> None:
    created = timezone.now() - age
    Event.objects.bulk_create([Event(created_at=created) for _ in range(count)], batch_size=5000)


def running(make_schedule: Any, **fields: Any) -> CleanupSchedule:
    fields.setdefault("task", "delete_old_rows")
    fields.setdefault("params", OLD_ROWS)
    fields.setdefault("interval", timedelta(hours=1))
    fields.setdefault("max_table_fraction", 0)  # these tests delete most of their table
    fields.setdefault("desired_state", CleanupSchedule.DesiredState.RUNNING)
    return make_schedule(**fields)


run = run_iteration


# The window in the cadence ----------------------------------------------------------------


def test_a_run_due_at_0259_with_a_0300_to_0400_window_is_planned_at_0300():
    rule = Cadence(
        kind=CRON,
        interval=timedelta(minutes=1),
        cron="59 2 * * *",
        timezone="Europe/Berlin",
        window=Window(time(3), time(4)),
    )
    after = datetime(2026, 12, 7, 12, 0, tzinfo=BERLIN)
    assert rule.next_after(after) == datetime(2026, 12, 8, 3, 0, tzinfo=BERLIN)
    # Inside the window, the cadence as it is.
    every = Cadence(
        kind=FIXED_RATE,
        interval=timedelta(minutes=20),
        anchor=datetime(2026, 12, 7, 0, 0, tzinfo=BERLIN),
        timezone="Europe/Berlin",
        window=Window(time(3), time(4)),
    )
    times = every.upcoming(datetime(2026, 12, 7, 2, 30, tzinfo=BERLIN), 5)
    assert [t.astimezone(BERLIN).strftime("%d %H:%M") for t in times] == [
        "07 03:00",
        "07 03:20",
        "07 03:40",
        "08 03:00",
        "08 03:20",
    ]
    # Slots outside the window are not missed slots: they move to its opening.
    assert every.slots_between(datetime(2026, 12, 7, 4, 0, tzinfo=BERLIN), after) == 0


def test_a_window_across_midnight():
    window = Window(time(22), time(5))
    assert window.contains(time(23, 30)) and window.contains(time(4, 59))
    assert not window.contains(time(5)) and not window.contains(time(12))
    late = datetime(2026, 12, 7, 23, 30, tzinfo=BERLIN)
    assert window.closing(late, BERLIN) == datetime(2026, 12, 8, 5, 0, tzinfo=BERLIN)
    early = datetime(2026, 12, 8, 1, 0, tzinfo=BERLIN)
    assert window.closing(early, BERLIN) == datetime(2026, 12, 8, 5, 0, tzinfo=BERLIN)
    noon = datetime(2026, 12, 8, 12, 0, tzinfo=BERLIN)
    assert window.closing(noon, BERLIN) is None
    assert window.opening(noon, BERLIN) == datetime(2026, 12, 8, 22, 0, tzinfo=BERLIN)


@pytest.mark.django_db
def test_a_window_needs_both_ends_and_two_different_times(make_schedule):
    from django.core.exceptions import ValidationError

    schedule = make_schedule(window_start=time(3))
    with pytest.raises(ValidationError) as error:
        schedule.full_clean()
    assert "window_end" in error.value.message_dict
    schedule.window_end = time(3)
    with pytest.raises(ValidationError) as error:
        schedule.full_clean()
    assert "must end at another time" in error.value.message_dict["window_end"][0]


@pytest.mark.django_db
def test_the_cadence_preview_shows_the_window(admin_client):
    answer = admin_client.get(
        reverse("cleanups:cadence_preview"),
        {
            "cadence": "fixed_rate",
            "interval": "00:20:00",
            "timezone": "Europe/Berlin",
            "window_start": "03:00",
            "window_end": "04:00",
        },
    )
    assert answer.status_code == 200, answer.content
    data = answer.json()
    assert (
        data["window"] == "Runs only from 03:00 to 04:00 (Europe/Berlin); a run due outside waits."
    )
    assert all(label[11:13] == "03" for label in data["times"])
    bad = admin_client.get(
        reverse("cleanups:cadence_preview"),
        {"cadence": "fixed_rate", "interval": "00:20:00", "window_start": "25:00"},
    )
    assert bad.status_code == 400 and bad.json()["parameter"] == "window_start"


# The window on the engine and on a run ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_due_before_its_window_starts_when_it_opens(make_schedule, worker, settings):
    settings.TIME_ZONE = "UTC"
    events(5, 40 * DAY)
    opens = (timezone.now() + timedelta(seconds=3)).astimezone(UTC)
    closes = opens + timedelta(hours=1)
    schedule = running(
        make_schedule,
        cadence=CleanupSchedule.Cadence.FIXED_RATE,
        timezone="UTC",
        window_start=opens.time(),
        window_end=closes.time() if closes.date() == opens.date() else time(23, 59, 59),
        desired_state=CleanupSchedule.DesiredState.STOPPED,
    )
    control.start_schedule(schedule)
    schedule.refresh_from_db()
    assert abs((schedule.next_run_at - opens).total_seconds()) < 0.01  # planned, not skipped
    first = wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, status=Status.SUCCEEDED).first(),
        timeout=30,
    )
    assert first.started_at >= opens - timedelta(milliseconds=1)
    assert abs((first.planned_at - opens).total_seconds()) < 0.01
    assert first.items_deleted == 5
    assert not CleanupRun.objects.filter(schedule=schedule, status=Status.SKIPPED).exists()
    control.terminate_schedule(schedule)


@pytest.mark.django_db
def test_a_run_still_deleting_when_its_window_closes_stops_and_the_next_goes_on(
    make_schedule, settings
):
    settings.TIME_ZONE = "UTC"
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    events(3000, 40 * DAY)
    now = timezone.now().astimezone(UTC)
    closes = now + timedelta(seconds=2)
    opens = now - timedelta(minutes=5)
    schedule = running(
        make_schedule,
        params={**OLD_ROWS, "batch_size": 100},
        cadence=CleanupSchedule.Cadence.FIXED_RATE,
        timezone="UTC",
        window_start=opens.time(),
        window_end=closes.time(),
        max_rows_per_second=500,  # 3,000 rows would take 6 s: the window closes first
    )
    first = run(schedule, 1)
    left = Event.objects.count()
    assert first.status == Status.SUCCEEDED
    assert 0 < first.items_deleted < 3000 and left == 3000 - first.items_deleted
    assert f"Window closed, {left:,} left." in first.message
    assert first.details["backlog"]["rows"] == left
    assert first.finished_at < closes + timedelta(seconds=1)  # after its batch, not its rows
    assert first.throttled_seconds > 0.5  # the rate held it back
    schedule.refresh_from_db()
    # The next run is planned for the window's next opening (tomorrow), not skipped.
    assert schedule.next_run_at.time().replace(microsecond=0) == opens.time().replace(microsecond=0)
    assert schedule.next_run_at > closes
    # The window opens again: the next run goes on from where the first stopped.
    later = timezone.now().astimezone(UTC)
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        window_start=(later - timedelta(minutes=5)).time(),
        window_end=(later + timedelta(minutes=5)).time(),
        max_rows_per_second=None,
    )
    second = run(schedule, 2)
    assert second.status == Status.SUCCEEDED and second.items_deleted == left
    assert Event.objects.filter(created_at__lt=timezone.now() - 30 * DAY).count() == 0
    assert "Window closed" not in second.message


@pytest.mark.django_db
def test_a_pause_between_batches_and_a_rate_are_counted_on_the_run(make_schedule, settings):
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    settings.CLEANUP_BATCH_PAUSE_MS = 200
    events(500, 40 * DAY)
    schedule = running(make_schedule, params={**OLD_ROWS, "batch_size": 100})
    paused = run(schedule, 1)
    assert paused.items_deleted == 500
    # Five batches of 100, a pause after each but the last.
    assert 0.7 < paused.details["held_back"]["batch pause"] < 3
    assert paused.throttled_seconds == pytest.approx(paused.details["held_back"]["batch pause"])
    settings.CLEANUP_BATCH_PAUSE_MS = 0
    events(400, 40 * DAY)
    paced = running(make_schedule, params={**OLD_ROWS, "batch_size": 100}, max_rows_per_second=250)
    rated = run(paced, 1)
    assert rated.items_deleted == 400
    # 400 rows at 250 a second: the 300 before the last batch take 1.2 s, most of it waiting.
    assert rated.duration >= timedelta(seconds=1.1)
    assert rated.details["held_back"]["max_rows_per_second"] > 0.9


# After a big delete -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_big_delete_analyzes_the_table_and_records_its_size(make_schedule, settings):
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    settings.CLEANUP_ANALYZE_AFTER_ROWS = 2000
    events(3000, 40 * DAY)
    events(200, DAY)
    schedule = running(make_schedule, vacuum=True)
    done = run(schedule, 1)
    assert done.items_deleted == 3000
    table = done.details["tables"]["testapp.Event"]
    assert table["analyzed"] is True
    assert table["before"] > 0 and table["after"] > 0
    if connection.vendor == "postgresql":
        assert table["vacuumed"] is True
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT last_analyze, last_vacuum FROM pg_stat_user_tables"
                " WHERE relname = 'testapp_event'"
            )
            last_analyze, last_vacuum = cursor.fetchone()
        assert last_analyze is not None and last_vacuum is not None
    else:
        # SQLite: the table's own pages shrink (dbstat); the file needs incremental auto-vacuum.
        assert table["after"] < table["before"]
        assert table["vacuumed"] is False
        assert table["vacuum_skipped"] == "SQLite auto_vacuum is not INCREMENTAL"
    # A small delete does neither.
    events(50, 40 * DAY)
    small = run(schedule, 2)
    assert small.items_deleted == 50 and "tables" not in small.details


# The backlog and the catch-up -------------------------------------------------------------


@pytest.mark.django_db
def test_the_backlog_is_the_oldest_due_row_past_the_cutoff_and_the_count_left(
    make_schedule, settings
):
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    for age in (35, 40, 45, 50):
        events(10, age * DAY)
    events(10, DAY)
    schedule = running(make_schedule, max_rows_per_run=20)  # takes the 50- and 45-day rows
    done = run(schedule, 1)
    assert done.items_deleted == 20
    backlog = done.details["backlog"]
    assert backlog["rows"] == 20 and backlog["capped"] is False
    assert backlog["seconds"] == pytest.approx((40 - 30) * 86400, abs=60)
    schedule.refresh_from_db()
    assert schedule.backlog_rows == 20
    assert schedule.backlog_seconds == pytest.approx(backlog["seconds"])


@pytest.mark.django_db
def test_a_500000_row_backlog_is_caught_up_across_runs_with_the_guard_on(
    make_schedule, django_user_model
):
    from django.contrib.auth.models import Permission

    # Never cleaned: 500,000 rows from 530 to 31 days old, and 100,000 young ones.
    now = timezone.now()
    for chunk in range(50):
        Event.objects.bulk_create(
            [
                Event(created_at=now - timedelta(days=31 + (chunk * 10_000 + i) / 1000))
                for i in range(10_000)
            ],
            batch_size=10_000,
        )
    events(100_000, DAY)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # as a table that grew over time has its statistics
            cursor.execute("ANALYZE testapp_event")
    # The guard as it comes, with runs of at most 50,000 rows.
    schedule = running(make_schedule, max_table_fraction=None, max_rows_per_run=50_000)
    # Its first run would take 50,000 (the cap: the guard judges one run, not the backlog),
    # more than a first run may without a person.
    held = run(schedule, 1)
    assert held.status == Status.HELD and held.review["rule"] == "first_run"
    assert held.review["counts"] == {"testapp.Event": 50_000}
    assert Event.objects.count() == 600_000
    person = django_user_model.objects.create_user("approver", is_staff=True)
    for codename in ("approve_cleanuprun", "delete_event", "view_event"):
        person.user_permissions.add(Permission.objects.get(codename=codename))
    control.approve_run(held, django_user_model.objects.get(pk=person.pk))
    # From there on nobody touches it: each run takes the oldest 50,000 and the backlog shrinks.
    behind = []
    for iteration in range(2, 12):
        done = run(schedule, iteration)
        assert done.status == Status.SUCCEEDED, done.message
        behind.append((done.items_deleted, done.details["backlog"]))
    assert [deleted for deleted, _ in behind] == [50_000] * 10
    assert [backlog["rows"] for _, backlog in behind] == list(range(450_000, -1, -50_000))
    ages = [backlog["seconds"] / 86400 for _, backlog in behind]
    assert ages == sorted(ages, reverse=True) and ages[-1] == 0
    assert ages[0] == pytest.approx(450, abs=1)  # the oldest went first
    assert Event.objects.count() == 100_000


# The replica throttle (PostgreSQL, a real streaming replica) ------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_waits_while_the_replica_lags_and_finishes_once_it_catches_up(
    make_schedule,
    settings,
    streaming_replica,  # noqa: F811 (the fixture imported above)
):
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    settings.CLEANUP_MAX_REPLICA_LAG_SECONDS = 1.0
    events(2000, 40 * DAY)
    schedule = running(make_schedule, params={**OLD_ROWS, "batch_size": 200})
    streaming_replica.pause()
    # The site goes on writing while replay is paused: the replica falls behind.
    lag = ReplicaLag()
    wait_until(lambda: events(10, DAY) or (lag.seconds() or 0) > 1.5, timeout=30, interval=0.1)
    outcome: list[Any] = []

    def deleting() -> None:
        try:
            outcome.append(execute_iteration(schedule.pk, 1))
        finally:
            connection.close()

    thread = threading.Thread(target=deleting)
    thread.start()
    try:
        # It deletes until the replica is a second behind, then waits, counting the wait.
        waited = wait_until(
            lambda: CleanupRun.objects.filter(schedule=schedule, throttled_seconds__gt=2).first(),
            timeout=30,
        )
        assert waited.status == Status.RUNNING
        assert waited.details["held_back"]["replica lag"] > 2
        left = Event.objects.count()
        assert left > 0
        longer = waited.throttled_seconds + 1
        wait_until(
            lambda: CleanupRun.objects.filter(pk=waited.pk, throttled_seconds__gt=longer).exists(),
            timeout=30,
        )
        assert Event.objects.count() == left  # still waiting: nothing more went
    finally:
        streaming_replica.resume()
    thread.join(timeout=60)
    assert not thread.is_alive() and outcome
    done = CleanupRun.objects.get(schedule=schedule, iteration=1)
    assert done.status == Status.SUCCEEDED and done.items_deleted == 2000
    assert Event.objects.filter(created_at__lt=timezone.now() - 30 * DAY).count() == 0


# Files: the cap and the backlog from the run's own scan --------------------------------------


@pytest.mark.django_db
def test_a_file_schedule_takes_its_cap_and_measures_what_is_left(make_schedule, settings, tmp_path):
    import os

    settings.CLEANUP_ALLOWED_DIRS = [str(tmp_path)]
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    now = timezone.now().timestamp()
    for number, age_days in enumerate([10, 12, 14, 16, 1]):
        path = tmp_path / f"file-{number}.log"
        path.write_text("x")
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    schedule = running(
        make_schedule,
        params={"directory": str(tmp_path), "pattern": "*.log", "older_than_days": 7},
        task="delete_old_files",
        max_rows_per_run=2,
    )
    first = run(schedule, 1)
    assert first.status == Status.SUCCEEDED and first.items_deleted == 2
    assert "the most one run deletes, 2" in first.message
    assert len(list(tmp_path.glob("*.log"))) == 3
    backlog = first.details["backlog"]
    assert backlog["rows"] == 2
    oldest = min(p.stat().st_mtime for p in tmp_path.glob("*.log") if "4" not in p.name)
    assert backlog["seconds"] == pytest.approx(now - 7 * 86400 - oldest, abs=60)
    second = run(schedule, 2)
    assert second.items_deleted == 2
    assert second.details["backlog"] == {"seconds": 0.0, "rows": 0, "capped": False}
    assert [p.name for p in tmp_path.glob("*.log")] == ["file-4.log"]


@pytest.mark.django_db
def test_a_system_check_warns_when_the_date_field_has_no_index(make_schedule, settings):
    from cleanups.checks import check_cleanup_indexes

    make_schedule(
        name="by-day",
        task="delete_old_rows",
        params={"model": "testapp.Event", "field": "day", "older_than_days": 30},
    )
    make_schedule(name="by-created", task="delete_old_rows", params=OLD_ROWS)
    settings.CLEANUP_SCHEDULES = {
        "declared": {
            "task": "delete_old_rows",
            "params": {"model": "testapp.Event", "field": "day", "older_than_days": 1},
        }
    }
    warnings = check_cleanup_indexes(databases=["default"])
    assert [w.id for w in warnings] == ["cleanups.W001", "cleanups.W001"]
    assert "'declared'" in warnings[0].msg and "'by-day'" in warnings[1].msg
    assert "testapp.Event by 'day', which has no index" in warnings[1].msg
    # Without --database, as Django's database checks, nothing (no other command prints it).
    assert check_cleanup_indexes(databases=None) == []


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_stops_while_a_run_is_paced_leaves_the_run_to_the_engine(
    make_schedule, settings
):
    from cleanups.contract import WorkerStopping
    from cleanups.runs import worker

    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    settings.CLEANUP_BATCH_PAUSE_MS = 60_000  # it would wait a minute after its first batch
    events(300, 40 * DAY)
    schedule = running(make_schedule, params={**OLD_ROWS, "batch_size": 100})
    raised: list[BaseException] = []

    def deleting() -> None:
        try:
            execute_iteration(schedule.pk, 1)
        except BaseException as error:  # what it raised is the point
            raised.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=deleting)
    thread.start()
    try:
        wait_until(lambda: Event.objects.count() == 200)  # one batch went; now it waits
        worker.STOPPING.set()
        thread.join(timeout=10)
    finally:
        worker.STOPPING.clear()
    assert not thread.is_alive()
    assert [type(error) for error in raised] == [WorkerStopping]
    stopped = CleanupRun.objects.get(schedule=schedule, iteration=1)
    # Not failed: its batch is counted, and the run is the engine's to deliver again.
    assert stopped.status == Status.RUNNING and stopped.items_deleted == 100


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window_start", "25:61"),
        ("window_start", "'; DROP TABLE x; --"),
        ("window_end", "9" * 40),
        ("max_rows_per_second", "-5"),
        ("max_rows_per_second", "0"),
        ("max_rows_per_second", "1e400"),
    ],
)
def test_hostile_window_and_rate_values_are_form_errors(admin_client, field, value):
    from tests.conftest import form_data

    before = CleanupSchedule.objects.count()
    data = form_data(**{"window_start": "03:00", "window_end": "04:00", field: value})
    answer = admin_client.post(reverse("admin:cleanups_cleanupschedule_add"), data)
    assert answer.status_code == 200  # the form again, with its error: never a 500
    assert field in answer.context["adminform"].form.errors
    assert CleanupSchedule.objects.count() == before
