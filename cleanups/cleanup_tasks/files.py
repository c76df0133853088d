"""The built-in task that deletes old files, within the directories the deployment allows."""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError

from cleanups.conf import settings
from cleanups.registry import (
    CleanupContext,
    Params,
    bool_param,
    cleanup_task,
    positive_days,
    reject_unknown,
)
from cleanups.tasks import holds

# delete_old_files ---------------------------------------------------------------------------


def allowed_dirs() -> list[Path]:
    return [Path(d).resolve() for d in settings.CLEANUP_ALLOWED_DIRS if d]


def _inside_allowed(directory: Any) -> Path:
    """The real directory (symlinks and .. resolved), if it lies in CLEANUP_ALLOWED_DIRS."""
    if not isinstance(directory, str) or not directory:
        raise ValidationError("directory is required.")
    roots = allowed_dirs()
    if not roots:
        raise ValidationError(
            "No directory may be cleaned: set CLEANUP_ALLOWED_DIRS to the directories allowed."
        )
    real = Path(directory).resolve()
    if not any(real == root or root in real.parents for root in roots):
        raise ValidationError(
            "%(dir)s is outside the allowed directories (%(allowed)s).",
            params={"dir": directory, "allowed": ", ".join(str(r) for r in roots)},
        )
    return real


def _validate_delete_old_files(params: Params) -> Params:
    reject_unknown(
        params, {"directory", "pattern", "older_than_days", "recursive", "remove_empty_dirs"}
    )
    real = _inside_allowed(params.get("directory"))
    if not real.is_dir():
        raise ValidationError("%(dir)s is not a directory.", params={"dir": params["directory"]})
    pattern = params.get("pattern", "*")
    if not isinstance(pattern, str) or not pattern or "/" in pattern:
        raise ValidationError('pattern must be a file-name glob such as "*.log" (no "/").')
    if "older_than_days" not in params:
        raise ValidationError("older_than_days is required.")
    return {
        "directory": params["directory"],
        "pattern": pattern,
        "older_than_days": positive_days(params, "older_than_days", None),
        "recursive": bool_param(params, "recursive", False),
        "remove_empty_dirs": bool_param(params, "remove_empty_dirs", False),
    }


@cleanup_task(
    "delete_old_files",
    'Delete files under an allowed directory matching a glob, older than an age: {"directory": '
    '"/var/log/app", "pattern": "*.log", "older_than_days": 7, "recursive": false, '
    '"remove_empty_dirs": false}.',
    validate=_validate_delete_old_files,
)
def delete_old_files(ctx: CleanupContext) -> str:
    params = ctx.params
    root = _inside_allowed(params["directory"])  # checked again: the tree may have changed
    cutoff = time.time() - params["older_than_days"] * 86400
    # Everything below works on directory descriptors, never on paths: a directory swapped for
    # a symlink during the walk cannot redirect a single stat, unlink or rmdir outside the root.
    root_fd = _open_directory_nofollow(root, params["directory"])
    try:
        if ctx.guard is not None:
            # Counted first, as rows are: the guard may hold the run before a file goes.
            found: list[list[str]] = []
            counted, _, _ = _delete_files_under(ctx, root_fd, root, cutoff, count_into=found)
            cap = ctx.cap_left()  # the most this run takes: the guard judges that
            counted = counted if cap is None else min(counted, cap)
            ctx.guard("files", {"files": counted}, {}, lambda: found)
        files, bytes_freed, finished = _delete_files_under(ctx, root_fd, root, cutoff)
        if not finished:
            return f"Paused after {files} file(s); continuing."
        if params["remove_empty_dirs"] and params["recursive"] and not ctx.dry_run:
            removed = _remove_empty_dirs_under(root_fd)
            if removed:
                ctx.deleted("directories", removed)
    finally:
        os.close(root_fd)
    verb = "Would free" if ctx.dry_run else "Freed"
    capped = " (the most its approval allows)" if ctx.capped else ""
    if ctx.capped_by_row_cap:
        capped = f" (the most one run deletes, {ctx.row_cap:,}; the next runs take the rest)"
    return f"{verb} {bytes_freed} byte(s) in {files} file(s){capped}.{ctx.kept_message()}"


# Files deleted between two reports: a worker killed mid-run leaves a record short by at most
# this many, while a report (one UPDATE) still costs little beside the unlinks it covers.
FILES_PER_BATCH = 20


def _open_directory_nofollow(real: Path, directory: str) -> int:
    """A descriptor of ``real`` (an absolute, resolved path), opened one component at a time,
    none of them through a symlink (one may have appeared since the path was resolved)."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in real.parts[1:]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as error:
        os.close(fd)
        raise ValidationError(
            "%(dir)s cannot be opened without following a symlink: %(error)s",
            params={"dir": directory, "error": error.strerror},
        ) from None
    return fd


def _delete_files_under(
    ctx: CleanupContext,
    root_fd: int,
    root: Path,
    cutoff: float,
    count_into: list[list[str]] | None = None,
) -> tuple[int, int, bool]:
    """Delete (dry run: count) the matching regular files older than ``cutoff``, reporting
    after every batch, leaving files under a directory hold alone, moving each into the
    archive first when the run archives. ``count_into``: only count (a guard's count), the
    first paths into that list. Returns files, bytes and whether the walk finished."""
    params = ctx.params
    files = bytes_freed = 0
    batch_files = batch_bytes = 0
    counting = count_into is not None
    # Once the run may delete no more (its cap, its window), the walk goes on to measure what
    # is left: the backlog, from this scan (a dry run measures all it would delete).
    leaving = ctx.dry_run
    left, oldest_left = 0, None
    kept: dict[str, int] = {}
    held = holds.source().directory_holds()

    def report() -> None:
        nonlocal batch_files, batch_bytes, held
        if batch_files and not counting:
            ctx.deleted("files", batch_files, bytes=batch_bytes)
        batch_files = batch_bytes = 0
        for reason, count in kept.items():
            ctx.kept_by_hold(reason, count)
        held = holds.source().directory_holds()  # a hold added meanwhile: from the next batch

    # fwalk opens each subdirectory relative to its parent's descriptor and enters it only if
    # it is the very directory lstat saw: never a symlink, whenever the swap happens.
    walk = os.fwalk(".", topdown=True, follow_symlinks=False, dir_fd=root_fd)
    for dirpath, dirnames, filenames, dir_fd in walk:
        if not params["recursive"]:
            dirnames.clear()
        for name in filenames:
            if not fnmatch.fnmatchcase(name, params["pattern"]):
                continue
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            # Only regular files: never a symlink (its target may be anywhere), fifo or device.
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff:
                continue
            path = os.path.normpath(os.path.join(root, dirpath, name))
            reason = holds.held_reason(path, held)
            if reason is not None:
                kept[reason] = kept.get(reason, 0) + 1
                continue
            if not counting and not leaving:
                allowed = ctx.left_to_delete("files")
                cap = ctx.cap_left()
                if allowed is not None and batch_files >= allowed:
                    ctx.capped = leaving = True
                elif cap is not None and batch_files >= cap:
                    ctx.capped_by_row_cap = leaving = True
                if leaving:
                    report()
            if leaving and not counting:
                left += 1
                oldest_left = min(oldest_left or info.st_mtime, info.st_mtime)
                if not ctx.dry_run:
                    continue
            if counting:
                if len(count_into) < SAMPLE_FILES:
                    count_into.append([path, f"{info.st_size} bytes"])
            elif not ctx.dry_run and not _delete_file(ctx, name, dir_fd, path):
                continue
            files += 1
            bytes_freed += info.st_size
            batch_files += 1
            batch_bytes += info.st_size
            if batch_files >= FILES_PER_BATCH:
                report()
            if not counting and not leaving and ctx.out_of_time():
                report()
                if ctx.unfinished:  # its part's time: the next part goes on
                    walk.close()
                    return files, bytes_freed, False
                leaving = True  # its window closed: what is left is measured
    report()
    if not counting:
        behind = max(cutoff - oldest_left, 0.0) if oldest_left is not None else 0.0
        ctx.backlog = {"seconds": behind, "rows": left, "capped": False}
    return files, bytes_freed, True


SAMPLE_FILES = 20


def _delete_file(ctx: CleanupContext, name: str, dir_fd: int, path: str) -> bool:
    """Unlink one file (moved into the archive first, when the run archives, and recorded on
    the run before it goes); False if it had gone already."""
    try:
        if ctx.archive is not None:
            ctx.archived(ctx.archive.move_file(name, dir_fd, path))
            ctx.save_archive()
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _remove_empty_dirs_under(root_fd: int) -> int:
    """Remove the empty directories below the root (never the root), deepest first."""
    removed = 0
    for _dirpath, dirnames, _filenames, dir_fd in os.fwalk(
        ".", topdown=False, follow_symlinks=False, dir_fd=root_fd
    ):
        for name in dirnames:
            try:
                # rmdir never follows a symlink (ENOTDIR) and leaves a full directory alone.
                os.rmdir(name, dir_fd=dir_fd)
            except OSError:
                continue
            removed += 1
    return removed
