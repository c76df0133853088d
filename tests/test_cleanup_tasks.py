"""The built-in cleanup tasks on real data: rows, sessions, files, run history, orchestrations."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.utils import timezone

from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import CleanupContext, get_task
from cleanups.runs.execute import execute_iteration
from tests.testapp.models import Audited, Child, DeletionLog, Event, Parent

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)


def run_task(name: str, params: dict, dry_run: bool = False) -> CleanupContext:
    task = get_task(name)
    ctx = CleanupContext(task.clean_params(params), dry_run=dry_run)
    ctx.message = task.function(ctx)
    return ctx


def invalid(name: str, params: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        get_task(name).clean_params(params)
    return " ".join(caught.value.messages)


# delete_old_rows ----------------------------------------------------------------------------


@pytest.fixture
def events():
    now = timezone.now()
    Event.objects.bulk_create(
        [Event(created_at=now - 40 * DAY, kind="debug") for _ in range(30)]
        + [Event(created_at=now - 40 * DAY, kind="audit") for _ in range(5)]
        + [Event(created_at=now - 2 * DAY, kind="debug") for _ in range(7)]
    )


def test_delete_old_rows_deletes_only_old_rows_in_batches(events):
    ctx = run_task(
        "delete_old_rows",
        {"model": "testapp.Event", "field": "created_at", "older_than_days": 30, "batch_size": 4},
    )
    assert ctx.targets == {"testapp.Event": {"items": 35, "bytes": 0}}
    assert Event.objects.count() == 7
    assert not Event.objects.filter(created_at__lt=timezone.now() - 30 * DAY).exists()
    assert ctx.message == "Deleted 35 row(s) older than 30 day(s)."


def test_delete_old_rows_honours_the_filter_and_fractional_days(events):
    ctx = run_task(
        "delete_old_rows",
        {
            "model": "testapp.Event",
            "field": "created_at",
            "older_than_days": 1.5,
            "filter": {"kind": "debug"},
        },
    )
    assert ctx.items == 37
    assert sorted(Event.objects.values_list("kind", flat=True)) == ["audit"] * 5


def test_delete_old_rows_on_a_date_field():
    today = timezone.now().date()
    Event.objects.bulk_create(
        Event(created_at=timezone.now(), day=today - timedelta(days=n)) for n in range(10)
    )
    ctx = run_task(
        "delete_old_rows", {"model": "testapp.Event", "field": "day", "older_than_days": 5}
    )
    assert ctx.items == 4  # 6, 7, 8 and 9 days ago
    assert Event.objects.count() == 6


def test_delete_old_rows_dry_run_counts_and_deletes_nothing(events):
    ctx = run_task(
        "delete_old_rows",
        {"model": "testapp.Event", "field": "created_at", "older_than_days": 30},
        dry_run=True,
    )
    assert ctx.items == 35
    assert Event.objects.count() == 42
    assert ctx.message.startswith("Would delete 35")


def test_delete_old_rows_cascades_to_children():
    now = timezone.now()
    for age in (40, 40, 40, 1):
        parent = Parent.objects.create(created_at=now - age * DAY)
        Child.objects.bulk_create(Child(parent=parent) for _ in range(3))

    ctx = run_task(
        "delete_old_rows",
        {"model": "testapp.Parent", "field": "created_at", "older_than_days": 30, "batch_size": 2},
    )
    assert ctx.targets["testapp.Parent"]["items"] == 3
    assert ctx.targets["testapp.Child"]["items"] == 9
    assert Parent.objects.count() == 1
    assert Child.objects.count() == 3
    assert set(Child.objects.values_list("parent_id", flat=True)) == set(
        Parent.objects.values_list("pk", flat=True)
    )


def test_delete_old_rows_fires_delete_signals():
    now = timezone.now()
    doomed = Audited.objects.bulk_create(Audited(created_at=now - 10 * DAY) for _ in range(5))
    Audited.objects.create(created_at=now)

    run_task(
        "delete_old_rows",
        {"model": "testapp.Audited", "field": "created_at", "older_than_days": 1, "batch_size": 2},
    )
    assert sorted(DeletionLog.objects.values_list("audited_id", flat=True)) == sorted(
        a.pk for a in doomed
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"field": "created_at", "older_than_days": 1}, "model is required"),
        ({"model": "Event", "field": "created_at", "older_than_days": 1}, "app_label.ModelName"),
        (
            {"model": "testapp.Nope", "field": "created_at", "older_than_days": 1},
            "not an installed",
        ),
        ({"model": "testapp.Event", "field": "nope", "older_than_days": 1}, "has no field nope"),
        ({"model": "testapp.Event", "field": "kind", "older_than_days": 1}, "not a date"),
        ({"model": "testapp.Event", "field": "created_at"}, "older_than_days is required"),
        ({"model": "testapp.Event", "field": "created_at", "older_than_days": 0}, "more than 0"),
        ({"model": "testapp.Event", "field": "created_at", "older_than_days": -3}, "more than 0"),
        ({"model": "testapp.Event", "field": "created_at", "older_than_days": "7"}, "a number"),
        (
            {"model": "testapp.Event", "field": "created_at", "older_than_days": 1, "filter": []},
            "filter must be a JSON object",
        ),
        (
            {
                "model": "testapp.Event",
                "field": "created_at",
                "older_than_days": 1,
                "filter": {"colour": "red"},
            },
            "colour is not one of testapp.Event's own plain fields",
        ),
        (
            {
                "model": "testapp.Event",
                "field": "created_at",
                "older_than_days": 1,
                "batch_size": 0,
            },
            "batch_size must be between 1 and 100000",
        ),
        (
            {"model": "testapp.Event", "field": "created_at", "older_than_days": 1, "x": 1},
            "Unknown parameter(s): x",
        ),
    ],
)
def test_delete_old_rows_rejects_bad_params(params, message):
    assert message in invalid("delete_old_rows", params)


# expired_sessions ---------------------------------------------------------------------------


def test_expired_sessions_deletes_in_database_batches_with_dry_run():
    now = timezone.now()
    Session.objects.bulk_create(
        [Session(session_key=f"old{n}", session_data="", expire_date=now - DAY) for n in range(12)]
        + [Session(session_key=f"new{n}", session_data="", expire_date=now + DAY) for n in range(3)]
    )
    assert run_task("expired_sessions", {"batch_size": 5}, dry_run=True).items == 12
    assert Session.objects.count() == 15

    ctx = run_task("expired_sessions", {"batch_size": 5})
    assert ctx.targets == {"sessions.Session": {"items": 12, "bytes": 0}}
    assert Session.objects.count() == 3
    assert "batch_size must be between" in invalid("expired_sessions", {"batch_size": 10**9})


# delete_old_files ---------------------------------------------------------------------------


def _file(path: Path, age_days: float, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_days * 86400
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def logs(tmp_path, settings):
    root = tmp_path / "allowed"
    settings.CLEANUP_ALLOWED_DIRS = [str(root)]
    _file(root / "old.log", 10, size=100)
    _file(root / "new.log", 1)
    _file(root / "old.txt", 10)
    _file(root / "sub" / "deep.log", 10, size=50)
    _file(root / "empty" / "gone.log", 10, size=1)
    return root


def test_delete_old_files_top_level_only_by_default(logs):
    ctx = run_task(
        "delete_old_files", {"directory": str(logs), "pattern": "*.log", "older_than_days": 7}
    )
    assert ctx.targets == {"files": {"items": 1, "bytes": 100}}
    assert not (logs / "old.log").exists()
    assert (logs / "new.log").exists() and (logs / "old.txt").exists()
    assert (logs / "sub" / "deep.log").exists()


def test_delete_old_files_recursive_and_removes_empty_dirs(logs):
    params = {
        "directory": str(logs),
        "pattern": "*.log",
        "older_than_days": 7,
        "recursive": True,
        "remove_empty_dirs": True,
    }
    assert run_task("delete_old_files", params, dry_run=True).targets == {
        "files": {"items": 3, "bytes": 151}
    }
    assert (logs / "sub" / "deep.log").exists()

    ctx = run_task("delete_old_files", params)
    assert ctx.targets["files"] == {"items": 3, "bytes": 151}
    assert ctx.targets["directories"]["items"] == 2
    assert sorted(p.name for p in logs.rglob("*")) == ["new.log", "old.txt"]
    assert logs.is_dir()


def test_delete_old_files_never_follows_or_deletes_through_symlinks(logs, tmp_path):
    outside = tmp_path / "outside"
    victim = _file(outside / "precious.log", 30)
    (logs / "link.log").symlink_to(victim)
    (logs / "linkdir").symlink_to(outside, target_is_directory=True)

    run_task(
        "delete_old_files",
        {"directory": str(logs), "pattern": "*.log", "older_than_days": 7, "recursive": True},
    )
    assert victim.exists()
    assert (logs / "link.log").is_symlink()


@pytest.mark.parametrize(
    "escape",
    [
        "{root}/../outside",  # ..
        "{outside}",  # an absolute path elsewhere
        "{root}/sneaky",  # a symlink inside pointing outside
        "/etc",
    ],
)
def test_delete_old_files_refuses_paths_outside_the_allowed_dirs(logs, tmp_path, escape):
    outside = tmp_path / "outside"
    outside.mkdir()
    (logs / "sneaky").symlink_to(outside, target_is_directory=True)
    directory = escape.format(root=logs, outside=outside)

    message = invalid(
        "delete_old_files", {"directory": directory, "pattern": "*", "older_than_days": 1}
    )
    assert "outside the allowed directories" in message


def test_delete_old_files_checks_the_directory_again_at_run_time(logs, tmp_path, settings):
    params = get_task("delete_old_files").clean_params(
        {"directory": str(logs / "sub"), "pattern": "*", "older_than_days": 1}
    )
    settings.CLEANUP_ALLOWED_DIRS = [str(tmp_path / "elsewhere")]  # the allow-list changed
    with pytest.raises(ValidationError, match="outside the allowed directories"):
        get_task("delete_old_files").function(CleanupContext(params))
    assert (logs / "sub" / "deep.log").exists()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"pattern": "*", "older_than_days": 1}, "directory is required"),
        ({"directory": "{root}/old.log", "older_than_days": 1}, "is not a directory"),
        ({"directory": "{root}", "pattern": "a/*.log", "older_than_days": 1}, "file-name glob"),
        ({"directory": "{root}", "pattern": "*"}, "older_than_days is required"),
        ({"directory": "{root}", "older_than_days": 0}, "more than 0"),
        ({"directory": "{root}", "older_than_days": 1, "recursive": "yes"}, "true or false"),
    ],
)
def test_delete_old_files_rejects_bad_params(logs, params, message):
    params = {k: v.format(root=logs) if isinstance(v, str) else v for k, v in params.items()}
    assert message in invalid("delete_old_files", params)


def test_delete_old_files_needs_an_allow_list(settings, tmp_path):
    settings.CLEANUP_ALLOWED_DIRS = []
    message = invalid("delete_old_files", {"directory": str(tmp_path), "older_than_days": 1})
    assert "set CLEANUP_ALLOWED_DIRS" in message


# prune_run_history --------------------------------------------------------------------------


def test_prune_run_history_keeps_newest_more_failures_and_running(make_schedule):
    schedule = make_schedule()
    other = make_schedule()
    now = timezone.now()
    statuses = ["failed" if n % 3 == 0 else "succeeded" for n in range(1, 21)]
    statuses[0] = "running"  # an old run still running: never deleted
    CleanupRun.objects.bulk_create(
        CleanupRun(
            schedule=s,
            iteration=n,
            status=status,
            task="sample",
            started_at=now - timedelta(hours=30 - n),
        )
        for s in (schedule, other)
        for n, status in enumerate(statuses, start=1)
    )

    ctx = run_task("prune_run_history", {"keep_last": 5, "keep_failed_last": 4})

    for s in (schedule, other):
        kept = dict(s.runs.values_list("iteration", "status"))
        # newest 5 finished (16-20), newest 4 failed (9, 12, 15, 18), the running one (1)
        assert set(kept) == {1, 9, 12, 15, 16, 17, 18, 19, 20}
        assert kept[1] == "running"
    assert ctx.items == 2 * 11


def test_prune_run_history_by_age(make_schedule):
    schedule = make_schedule()
    now = timezone.now()
    CleanupRun.objects.bulk_create(
        CleanupRun(
            schedule=schedule,
            iteration=n,
            status="succeeded",
            task="sample",
            started_at=now - n * DAY,
        )
        for n in range(1, 11)
    )
    params = {"keep_last": 0, "keep_failed_last": 0, "older_than_days": 5.5}
    assert run_task("prune_run_history", params, dry_run=True).items == 5
    run_task("prune_run_history", params)
    assert sorted(schedule.runs.values_list("iteration", flat=True)) == [1, 2, 3, 4, 5]
    assert "keep_last must be a whole number" in invalid("prune_run_history", {"keep_last": 1.5})
    assert "more than 0" in invalid("prune_run_history", {"older_than_days": 0})


# Every task through the activity: dry run recorded, counts per target ------------------------


def test_a_dry_run_is_recorded_as_one(events, make_schedule):
    schedule = make_schedule(
        task="delete_old_rows",
        params={"model": "testapp.Event", "field": "created_at", "older_than_days": 30},
        dry_run=True,
    )
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")

    execute_iteration(schedule.pk, 1)
    execute_iteration(schedule.pk, 1)  # a redelivered dry run counts afresh, not twice

    (run,) = schedule.runs.all()
    assert run.dry_run is True
    assert run.status == "succeeded"
    assert run.items_deleted == 35
    assert run.details["targets"] == {"testapp.Event": {"items": 35, "bytes": 0}}
    assert Event.objects.count() == 42


def test_purge_orchestrations_rejects_bad_params():
    assert "more than 0" in invalid("purge_orchestrations", {"older_than_days": 0})
    assert "Unknown parameter(s): days" in invalid("purge_orchestrations", {"days": 3})
    assert get_task("purge_orchestrations").clean_params({}) == {"older_than_days": 7}


def test_each_batch_takes_the_cheapest_correct_path():
    from django.db.models.signals import pre_delete

    from cleanups.registry import sql_cascade_plan

    assert sql_cascade_plan(Event.objects.all()) is None  # nothing depends: fast path
    assert sql_cascade_plan(Audited.objects.all()) is None  # signals: the collector
    assert sql_cascade_plan(Parent.objects.all()) == [Child._meta.get_field("parent")]

    seen = []

    def on_child_delete(sender, instance, **kwargs):
        seen.append(instance.pk)

    pre_delete.connect(on_child_delete, sender=Child)
    try:
        assert sql_cascade_plan(Parent.objects.all()) is None  # a child listens: the collector
        parent = Parent.objects.create(created_at=timezone.now() - 40 * DAY)
        children = Child.objects.bulk_create(Child(parent=parent) for _ in range(2))
        run_task(
            "delete_old_rows",
            {"model": "testapp.Parent", "field": "created_at", "older_than_days": 30},
        )
        assert sorted(seen) == sorted(c.pk for c in children)
    finally:
        pre_delete.disconnect(on_child_delete, sender=Child)
