"""The context a task runs with: its params, dry run, the counts it reports, its time left."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cleanups.access import Entitlement
from cleanups.tasks.params import Params

# What a run's guard is asked before a deleting call's first batch: the target about to go,
# the run's counts with it (per target), the table sizes, and a way to sample the rows; it
# raises HeldForReview.
Guard = Callable[[str, dict[str, int], dict[str, int], Callable[[], list[list[str]]]], None]


class HeldForReview(Exception):
    """A run's guard stopped it before it deleted anything: a person decides."""

    def __init__(self, rule: str, reason: str, review: dict[str, Any]) -> None:
        super().__init__(reason)
        self.rule, self.reason, self.review = rule, reason, review


class CleanupContext:
    """What a running task knows and reports: its params, dry run, counts, time left."""

    def __init__(
        self,
        params: Params,
        *,
        dry_run: bool = False,
        run: Any = None,
        deadline: float | None = None,
        entitlement: Entitlement | None = None,
    ) -> None:
        self.params = params
        self.dry_run = dry_run
        self.run = run
        self.deadline = deadline
        # A run acts for its schedule's editor; a context built by code (a shell, a test) has
        # no entitlement and its caller answers for what it deletes.
        self.entitlement = entitlement
        self.unfinished = False
        details = (run.details if run is not None else None) or {}
        self.targets: dict[str, dict[str, int]] = {
            name: dict(counts) for name, counts in details.get("targets", {}).items()
        }
        # Safety, set by the run: the guard (None: not guarded, as in a dry run, a later part
        # or an approved run), the most each target may lose (an approval's), the archiver.
        self.guard: Guard | None = None
        self.allowance: dict[str, int] | None = None
        self.archive: Any = None
        # Rows and files holds kept, by the hold's reason.
        self.kept: dict[str, int] = dict(details.get("kept", {}))
        self.capped = False

    @property
    def items(self) -> int:
        return sum(counts.get("items", 0) for counts in self.targets.values())

    def deleted(self, target: str, count: int, bytes: int = 0) -> None:
        """Record that ``count`` items of ``target`` went (in a dry run: would go).

        Call it inside the batch's transaction, so the record and the data never disagree.
        """
        counts = self.targets.setdefault(target, {"items": 0, "bytes": 0})
        counts["items"] += count
        counts["bytes"] = counts.get("bytes", 0) + bytes
        self._save()

    would_delete = deleted  # reads better in a dry run's code path

    def kept_by_hold(self, reason: str, count: int) -> None:
        """Record that a hold kept ``count`` items (the largest count seen for it)."""
        if count > self.kept.get(reason, 0):
            self.kept[reason] = count
            self._save()

    def archived(self, part: dict[str, Any]) -> None:
        """Record an archive part; call it in the transaction of the batch it holds."""
        if self.run is not None:
            self.run.archive_parts = [*(self.run.archive_parts or []), part]

    def save_archive(self) -> None:
        """Write the archive parts recorded so far (a file is recorded before it goes)."""
        self._save()

    def left_to_delete(self, target: str) -> int | None:
        """How many more items of ``target`` this run may delete (None: no cap)."""
        if self.allowance is None:
            return None
        done = self.targets.get(target, {}).get("items", 0)
        return max(self.allowance.get(target, 0) - done, 0)

    def kept_message(self) -> str:
        """ " 5 rows kept by hold 'litigation 42'." for each hold that kept something."""
        return "".join(f" {n} kept by hold '{reason}'." for reason, n in self.kept.items() if n)

    def out_of_time(self) -> bool:
        """True once this part of the run has used its time; stop and the loop resumes it."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.unfinished = True
        return self.unfinished

    def _save(self) -> None:
        if self.run is None:
            return
        # Through the run it was handed (its model saves the counts): this API never imports
        # the models, so a task module can be read without the app's models loaded.
        self.run.items_deleted = self.items
        details = {**(self.run.details or {}), "targets": self.targets}
        if self.kept:
            details["kept"] = self.kept
        self.run.details = details
        self.run.save_counts()
