"""The context a task runs with: its params, dry run, the counts it reports, its time left."""

from __future__ import annotations

import time
from typing import Any

from cleanups.access import Entitlement
from cleanups.tasks.params import Params


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
        self.run.details = {**(self.run.details or {}), "targets": self.targets}
        self.run.save_counts()
