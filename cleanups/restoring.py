"""Bringing a run's deleted rows (and files) back from its archive: every part's checksum
first, then the rows in batches, parents before children, skipping those whose primary key
exists again. Recorded on the run and in the admin's log."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from django.apps import apps
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_permission_codename
from django.core import serializers
from django.core.files.storage import Storage
from django.db import DatabaseError, IntegrityError, models, transaction
from django.utils import timezone

from cleanups.cleanup_tasks.files import allowed_dirs
from cleanups.models import CleanupRun
from cleanups.tasks.archive import archive_storage, sha256_of

BATCH = 1000
PROGRESS_SECONDS = 1.0  # a progress line at most this often, and after the last part


class RestoreRefused(Exception):
    """Nothing was restored; the message says why."""


@dataclass
class Restored:
    restored: int = 0
    skipped: int = 0
    failed: int = 0
    by_model: dict[str, int] = field(default_factory=dict)


def _lines(storage: Storage, name: str) -> Iterator[str]:
    with storage.open(name, "rb") as raw, gzip.GzipFile(fileobj=raw) as unzipped:
        yield from io.TextIOWrapper(unzipped, encoding="utf-8")


def verify(run: CleanupRun, storage: Storage) -> set[str]:
    """Check every part is there and unchanged (nothing is restored otherwise); the models the
    parts hold."""
    parts = run.archive_parts or []
    if not parts and (run.details or {}).get("archive_pruned"):
        raise RestoreRefused(
            f"Run {run.pk}'s archive was pruned (prune_archives): nothing to restore."
        )
    if not parts:
        raise RestoreRefused(f"Run {run.pk} has no archive: it ran without archive on.")
    labels: set[str] = set()
    for part in parts:
        name = part.get("name", "")
        if not name or not storage.exists(name):
            raise RestoreRefused(f"Archive part {name!r} is missing: nothing was restored.")
        if sha256_of(storage, name) != part.get("sha256"):
            raise RestoreRefused(
                f"Archive part {name!r} does not match its SHA-256 (changed since it was "
                "written): nothing was restored."
            )
        if "file" not in part:
            try:
                labels.update(json.loads(line)["model"] for line in _lines(storage, name))
            except (ValueError, KeyError, TypeError, OSError) as error:
                raise RestoreRefused(
                    f"Archive part {name!r} cannot be read ({error}): nothing was restored."
                ) from None
    return labels


def refusal(user: Any, labels: set[str], has_files: bool) -> str | None:
    if user is None or not user.is_active:
        return "Only an active user may restore."
    if user.is_superuser:
        return None
    if has_files:
        return "Restoring files takes a superuser."
    for label in sorted(labels):
        try:
            opts = apps.get_model(label)._meta
        except LookupError:
            return f"The archive holds rows of {label}, which is not an installed model."
        permission = f"{opts.app_label}.{get_permission_codename('add', opts)}"
        if not user.has_perm(permission):
            return f"{user.get_username()} lacks the permission {permission}."
    return None


def restore_run(
    run: CleanupRun,
    user: Any,
    *,
    dry_run: bool = False,
    progress: Callable[[str], None] = lambda line: None,
) -> Restored:
    """Restore (or count what would be restored) a run's archive. Raises RestoreRefused."""
    storage = archive_storage()
    labels = verify(run, storage)
    parts = run.archive_parts or []
    why = refusal(user, labels, any("file" in part for part in parts))
    if why:
        raise RestoreRefused(why)
    done = Restored()
    shown = 0.0
    for number, part in enumerate(parts, 1):
        if "file" in part:
            _restore_file(storage, part, done, dry_run)
        else:
            _restore_rows(storage, part, done, dry_run)
        if time.monotonic() - shown < PROGRESS_SECONDS and number < len(parts):
            continue
        shown = time.monotonic()
        progress(
            f"part {number}/{len(parts)} {part['name']}: {done.restored:,} restored, "
            f"{done.skipped:,} skipped, {done.failed:,} failed so far"
        )
    if not dry_run:
        entry = {
            "by": user.get_username(),
            "at": timezone.now().isoformat(),
            "restored": done.restored,
            "skipped": done.skipped,
            "failed": done.failed,
        }
        with transaction.atomic():
            fresh = CleanupRun.objects.select_for_update().get(pk=run.pk)
            fresh.restores = [*(fresh.restores or []), entry]
            fresh.save(update_fields=["restores"])
        run.restores = fresh.restores
        LogEntry.objects.log_actions(
            user_id=user.pk,
            queryset=[run],
            action_flag=CHANGE,
            change_message=(
                f"Restored run {run.pk}'s archive: {done.restored} restored, "
                f"{done.skipped} skipped, {done.failed} failed."
            ),
            single_object=True,
        )
    return done


def _restore_rows(storage: Storage, part: dict[str, Any], done: Restored, dry_run: bool) -> None:
    objects = serializers.deserialize("jsonl", _lines(storage, part["name"]))
    # The part's lines are parents first: consecutive runs of one model, in order.
    for model, group in groupby(objects, key=lambda item: type(item.object)):
        batch: list[Any] = []
        for item in group:
            batch.append(item)
            if len(batch) >= BATCH:
                _load(model, batch, done, dry_run)
                batch = []
        if batch:
            _load(model, batch, done, dry_run)


def _load(model: type[models.Model], batch: list[Any], done: Restored, dry_run: bool) -> None:
    manager = model._base_manager
    existing = set(
        manager.filter(pk__in=[item.object.pk for item in batch]).values_list("pk", flat=True)
    )
    fresh = [item for item in batch if item.object.pk not in existing]
    done.skipped += len(batch) - len(fresh)
    if dry_run:
        done.restored += len(fresh)
        return
    if not fresh:
        return
    label = model._meta.label
    try:
        with transaction.atomic():
            manager.bulk_create([item.object for item in fresh])
            for item in fresh:
                for name, values in (item.m2m_data or {}).items():
                    getattr(item.object, name).set(values)
        restored = len(fresh)
    except (IntegrityError, DatabaseError):
        restored = 0
        for item in fresh:  # one by one: which rows cannot come back
            try:
                with transaction.atomic():
                    item.save()
                restored += 1
            except (IntegrityError, DatabaseError):
                done.failed += 1
    done.restored += restored
    done.by_model[label] = done.by_model.get(label, 0) + restored


def _restore_file(storage: Storage, part: dict[str, Any], done: Restored, dry_run: bool) -> None:
    target = Path(part["file"])
    roots = allowed_dirs()
    inside = any(target.parent == root or root in target.parent.parents for root in roots)
    if not inside or target.exists() or target.is_symlink():
        done.skipped += 1
        return
    if dry_run:
        done.restored += 1
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with storage.open(part["name"], "rb") as source, open(target, "xb") as out:
            shutil.copyfileobj(source, out)
    except OSError:
        done.failed += 1
        return
    done.restored += 1
