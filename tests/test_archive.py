"""Archive before delete and restore: real rows, the file system storage, real processes."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.tasks.archive import archive_storage
from tests.conftest import ROOT, database_url, run_iteration
from tests.testapp.models import Audited, Child, Event, Parent

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)
Status = CleanupRun.Status


@pytest.fixture(autouse=True)
def archive_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    # These tests delete whole tables on purpose: the guard has its own tests.
    settings.CLEANUP_MAX_ROWS_PER_RUN = 0
    settings.CLEANUP_MAX_TABLE_FRACTION = 0
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0
    return tmp_path / "media" / "cleanups-archive"


def running(make_schedule: Any, model: str = "testapp.Parent", **fields: Any) -> CleanupSchedule:
    params = {"model": model, "field": "created_at", "older_than_days": 30}
    return make_schedule(
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        task="delete_old_rows",
        params=params,
        archive=True,
        **fields,
    )


run = run_iteration


def families(count: int, children: int = 1) -> None:
    created = timezone.now() - 40 * DAY
    parents = Parent.objects.bulk_create([Parent(created_at=created) for _ in range(count)])
    Child.objects.bulk_create([Child(parent=p) for p in parents for _ in range(children)])


def snapshot() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (
        list(Parent.objects.order_by("pk").values()),
        list(Child.objects.order_by("pk").values()),
    )


def test_an_archive_round_trip_brings_every_row_and_relation_back(
    make_schedule, admin_user, archive_root
):
    families(100_000)
    before = snapshot()
    done = run(running(make_schedule))
    assert done.status == Status.SUCCEEDED, done.error
    assert done.details["targets"]["testapp.Parent"]["items"] == 100_000
    assert done.items_deleted == 200_000  # with the children that went with them
    assert Parent.objects.count() == 0 and Child.objects.count() == 0
    parts = done.archive_parts
    assert sum(part["rows"] for part in parts) == 200_000  # parents with their children
    storage = archive_storage()
    for part in parts:
        assert storage.exists(part["name"]) and len(part["sha256"]) == 64

    call_command("restorerun", str(done.pk), "--user", admin_user.username)

    assert snapshot() == before  # every row, field by field, and every relation
    done.refresh_from_db()
    assert done.restores[0]["restored"] == 200_000 and done.restores[0]["by"] == "admin"
    # Restoring again finds every row there again: all skipped, nothing doubled.
    call_command("restorerun", str(done.pk), "--user", admin_user.username)
    done.refresh_from_db()
    assert done.restores[1]["skipped"] == 200_000 and done.restores[1]["restored"] == 0
    assert snapshot() == before


def test_a_model_with_signals_archives_through_the_collector(make_schedule, admin_user):
    created = timezone.now() - 40 * DAY
    Audited.objects.bulk_create([Audited(created_at=created) for _ in range(30)])
    before = list(Audited.objects.order_by("pk").values())
    done = run(running(make_schedule, model="testapp.Audited"))
    assert done.items_deleted == 30 and not Audited.objects.exists()
    call_command("restorerun", str(done.pk), "--user", admin_user.username)
    assert list(Audited.objects.order_by("pk").values()) == before


def test_dry_run_restore_counts_and_restores_nothing(make_schedule, admin_user, capsys):
    families(50)
    first = Parent.objects.order_by("pk").first()
    done = run(running(make_schedule))
    Parent.objects.create(pk=first.pk, created_at=timezone.now())  # one is there again
    call_command("restorerun", str(done.pk), "--dry-run", "--user", admin_user.username)
    out = capsys.readouterr()
    assert "99 would be restored, 1 skipped" in out.out
    assert "part 1/" in out.err  # progress, part by part
    assert Parent.objects.count() == 1 and Child.objects.count() == 0


def test_a_tampered_part_refuses_the_whole_restore(make_schedule, admin_user):
    families(40)
    done = run(running(make_schedule))
    storage = archive_storage()
    name = done.archive_parts[0]["name"]
    path = Path(storage.path(name))
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    row = json.loads(lines[0])
    row["fields"]["created_at"] = "2000-01-01T00:00:00Z"
    lines[0] = json.dumps(row)
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(CommandError, match="does not match its SHA-256"):
        call_command("restorerun", str(done.pk), "--user", admin_user.username)
    assert Parent.objects.count() == 0 and Child.objects.count() == 0


def test_restore_refuses_a_run_without_an_archive_and_a_user_without_add_rights(
    make_schedule, admin_user, django_user_model
):
    Event.objects.create(created_at=timezone.now() - 40 * DAY)
    plain = make_schedule(
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        task="delete_old_rows",
        params={"model": "testapp.Event", "field": "created_at", "older_than_days": 30},
    )
    unarchived = run(plain)
    with pytest.raises(CommandError, match="has no archive"):
        call_command("restorerun", str(unarchived.pk), "--user", admin_user.username)
    families(3)
    archived = run(running(make_schedule))
    clerk = django_user_model.objects.create_user("clerk")
    clerk.user_permissions.add(Permission.objects.get(codename="add_parent"))
    with pytest.raises(CommandError, match=r"lacks the permission testapp\.add_child"):
        call_command("restorerun", str(archived.pk), "--user", "clerk")
    clerk.user_permissions.add(Permission.objects.get(codename="add_child"))
    call_command("restorerun", str(archived.pk), "--user", "clerk")
    assert Parent.objects.count() == 3 and Child.objects.count() == 3


def test_a_part_that_cannot_be_written_fails_the_run_with_nothing_deleted(
    make_schedule, archive_root
):
    families(10)
    archive_root.parent.mkdir(parents=True)
    archive_root.write_text("not a directory")  # the storage cannot create its files
    failed = run(running(make_schedule))
    assert failed.status == Status.FAILED
    assert Parent.objects.count() == 10 and Child.objects.count() == 10
    assert failed.archive_parts == [] and failed.items_deleted == 0


def test_an_unknown_archive_storage_fails_the_run_and_is_a_form_error(make_schedule, settings):
    families(2)
    schedule = running(make_schedule)
    settings.CLEANUP_ARCHIVE_STORAGE = "archive-bucket"
    failed = run(schedule)
    assert failed.status == Status.FAILED
    assert "'archive-bucket', which is not a key of STORAGES" in failed.error
    assert Parent.objects.count() == 2
    with pytest.raises(Exception, match="not a key of STORAGES"):
        schedule.full_clean()


def test_a_file_deleting_schedule_moves_files_into_the_archive(
    make_schedule, settings, tmp_path, admin_user
):
    logs = tmp_path / "logs"
    logs.mkdir()
    settings.CLEANUP_ALLOWED_DIRS = [str(logs)]
    old = time.time() - 40 * 86400
    for name in ("a.log", "b.log"):
        (logs / name).write_text(f"content of {name}")
        os.utime(logs / name, (old, old))
    schedule = make_schedule(
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        task="delete_old_files",
        params={"directory": str(logs), "older_than_days": 30},
        archive=True,
    )
    done = run(schedule)
    assert done.items_deleted == 2 and not list(logs.iterdir())
    storage = archive_storage()
    assert sorted(part["file"] for part in done.archive_parts) == [
        str(logs / "a.log"),
        str(logs / "b.log"),
    ]
    for part in done.archive_parts:
        assert storage.open(part["name"]).read().decode().startswith("content of")
    call_command("restorerun", str(done.pk), "--user", admin_user.username)
    assert (logs / "a.log").read_text() == "content of a.log"


KILLER = """
import os, signal, sys
import django
django.setup()
from django.utils import timezone
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import CleanupContext, delete_in_batches
from cleanups.tasks.archive import Archiver
from tests.testapp.models import Parent

class KilledAfterAPart(Archiver):
    def write_lines(self, texts, rows, label):
        part = super().write_lines(texts, rows, label)
        if self.written == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # the part is closed; its DELETE never runs
        return part

run = CleanupRun.objects.get(pk=int(sys.argv[1]))
ctx = CleanupContext({}, run=run)
ctx.archive = KilledAfterAPart(f"kill/{run.pk}")
delete_in_batches(ctx, Parent.objects.all(), batch_size=100)
"""


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_between_a_part_and_its_delete_loses_nothing(
    make_schedule, settings, tmp_path
):
    families(500)
    all_keys = set(Parent.objects.values_list("pk", flat=True))
    schedule = make_schedule()
    record = CleanupRun.objects.create(
        schedule=schedule, iteration=1, started_at=timezone.now(), task="delete_old_rows"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "cleanupsite.settings_test",
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": settings.MEDIA_ROOT,
    }
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(record.pk)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr

    record.refresh_from_db()
    storage = archive_storage()
    recorded = set()
    for part in record.archive_parts:
        lines = gzip.decompress(storage.open(part["name"]).read()).decode().splitlines()
        recorded |= {json.loads(line)["pk"] for line in lines if '"testapp.parent"' in line}
    remaining = set(Parent.objects.values_list("pk", flat=True))
    assert len(record.archive_parts) == 2  # the third part was written, never recorded
    assert recorded and remaining
    assert recorded | remaining == all_keys and not recorded & remaining
    assert len(recorded) == 200 and record.items_deleted == 400  # with their children
    # Every child is with its parent: in the table, or in the same recorded part.
    assert set(Child.objects.values_list("parent_id", flat=True)) == remaining


def test_prune_archives_deletes_old_archives_except_those_a_hold_covers(make_schedule, admin_user):
    from cleanups.models import CleanupHold
    from cleanups.registry import CleanupContext, get_task

    families(5)
    done = run(running(make_schedule))
    parts = list(done.archive_parts)
    CleanupRun.objects.filter(pk=done.pk).update(finished_at=timezone.now() - 31 * DAY)
    storage = archive_storage()
    task = get_task("prune_archives")
    hold = CleanupHold.objects.create(reason="audit 7", model_label="testapp.Parent")

    kept = CleanupContext(task.clean_params({}))
    assert task.function(kept) == "Deleted 0 archive part(s). 1 kept by hold 'audit 7'."
    assert all(storage.exists(part["name"]) for part in parts)

    hold.delete()
    dry = CleanupContext(task.clean_params({}), dry_run=True)
    assert task.function(dry) == "Would delete 1 archive part(s)."
    pruned = CleanupContext(task.clean_params({}))
    assert task.function(pruned) == "Deleted 1 archive part(s)."
    assert not any(storage.exists(part["name"]) for part in parts)
    done.refresh_from_db()
    assert done.archive_parts == []
    assert [p["sha256"] for p in done.details["archive_pruned"]] == [p["sha256"] for p in parts]
    with pytest.raises(CommandError, match="archive was pruned"):
        call_command("restorerun", str(done.pk), "--user", admin_user.username)


def test_prune_run_history_keeps_archived_and_undecided_held_runs(make_schedule):
    from cleanups.registry import CleanupContext, get_task

    families(2)
    archived = run(running(make_schedule))
    schedule = archived.schedule
    held = CleanupRun.objects.create(
        schedule=schedule, iteration=2, status=Status.HELD, task="x", started_at=timezone.now()
    )
    plain = CleanupRun.objects.create(
        schedule=schedule, iteration=3, status=Status.SUCCEEDED, task="x", started_at=timezone.now()
    )
    task = get_task("prune_run_history")
    task.function(CleanupContext(task.clean_params({"keep_last": 0, "keep_failed_last": 0})))
    assert set(CleanupRun.objects.values_list("pk", flat=True)) == {archived.pk, held.pk}
    assert not CleanupRun.objects.filter(pk=plain.pk).exists()


def test_a_plain_table_archives_from_rows_and_restores_field_by_field(make_schedule, admin_user):
    old = timezone.now() - 40 * DAY
    Event.objects.bulk_create(
        [
            Event(
                created_at=old, day=(old - n * DAY).date() if n % 2 else None, kind=k, name=f"é{n}"
            )
            for n, k in enumerate(["info", "audit", "debug"] * 400)
        ]
    )
    before = list(Event.objects.order_by("pk").values())
    done = run(running(make_schedule, model="testapp.Event"))
    assert done.items_deleted == 1200 and not Event.objects.exists()
    assert sum(part["rows"] for part in done.archive_parts) == 1200
    call_command("restorerun", str(done.pk), "--user", admin_user.username)
    assert list(Event.objects.order_by("pk").values()) == before
