"""The context a task runs with: its params, dry run, the counts it reports, its time left."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
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
        self.capped_by_row_cap = False  # it stopped at row_cap: the runs after it go on
        # Kind to the database, set by the run: the most items the run may delete (None: no
        # cap; a bigger backlog goes oldest first, the rest in the runs after it), when its
        # window closes (an aware datetime), when the run as a whole must end (time.monotonic()),
        # and what paces its batches (cleanups.tasks.pacing.Pacer).
        self.row_cap: int | None = None
        self.window_closes: datetime | None = None
        self.run_ends: float | None = None
        self.pacer: Any = None
        self.vacuum = False  # VACUUM after a big delete (the schedule's "vacuum")
        # Why the run stopped for good before it had deleted everything ("window closed").
        self.stopped = ""
        self.throttled = float(getattr(run, "throttled_seconds", 0.0) or 0.0)
        self.held_back: dict[str, float] = dict(details.get("held_back", {}))
        # The retention backlog the task measured (measure_backlog), and table sizes and
        # maintenance after a big delete, per target.
        self.backlog: dict[str, Any] | None = None
        self.tables: dict[str, dict[str, Any]] = dict(details.get("tables", {}))
        # Called while waiting (between batches): raises when the worker stops.
        self.check_stop: Callable[[], None] | None = None

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
        """True once this part of the run has used its time (stop, and the loop resumes it in
        another part), or its window has closed (stop: the run ends, the next goes on)."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.unfinished = True
        closes = self.window_closes
        if not self.stopped and closes is not None and datetime.now(UTC) >= closes:
            self.stop("window closed")
        return self.unfinished or bool(self.stopped)

    def stop(self, reason: str) -> None:
        """End the run after the current batch, as succeeded, saying why ("window closed")."""
        self.stopped = self.stopped or reason

    def cap_left(self) -> int | None:
        """How many more items this run may delete under its row cap (None: no cap)."""
        if self.row_cap is None:
            return None
        return max(self.row_cap - self.items, 0)

    def hold_back(self, reason: str, seconds: float) -> None:
        """Record ``seconds`` spent waiting between batches for ``reason``."""
        if seconds <= 0:
            return
        self.throttled += seconds
        self.held_back[reason] = self.held_back.get(reason, 0.0) + seconds
        self._save()  # a wait shows on the run's page as it happens

    def table_noted(self, target: str, **facts: Any) -> None:
        """Record facts about a target's table (sizes, ANALYZE, VACUUM) on the run."""
        self.tables.setdefault(target, {}).update(facts)
        self._save()

    def stopped_message(self) -> str:
        """ " Window closed, 1,234 left." for a run that stopped early, else ""."""
        if not self.stopped:
            return ""
        left = self.backlog.get("rows") if self.backlog else None
        more = "more than " if self.backlog and self.backlog.get("capped") else ""
        count = f", {more}{left:,} left" if left is not None else ""
        return f" {self.stopped[0].upper()}{self.stopped[1:]}{count}."

    def _save(self) -> None:
        if self.run is None:
            return
        # Through the run it was handed (its model saves the counts): this API never imports
        # the models, so a task module can be read without the app's models loaded.
        self.run.items_deleted = self.items
        details = {**(self.run.details or {}), "targets": self.targets}
        if self.kept:
            details["kept"] = self.kept
        if self.held_back:
            details["held_back"] = {k: round(v, 3) for k, v in self.held_back.items()}
        if self.tables:
            details["tables"] = self.tables
        self.run.details = details
        self.run.throttled_seconds = round(self.throttled, 3)
        self.run.save_counts()
