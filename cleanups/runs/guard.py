"""The blast-radius guard: before a deleting run's first batch, its count against the
schedule's caps, its own history and its first run under a new definition. A run that trips
any rule deletes nothing and is held for a person's approval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from cleanups.conf import settings
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.tasks.context import Guard, HeldForReview

Status = CleanupRun.Status

# Below this a jump against history, or a fraction of a small table, is not worth a person.
SMALL_DELETION = 1000
HISTORY_RUNS = 10

MAX_ROWS, TABLE_FRACTION, JUMP, FIRST_RUN = (
    "max_rows_per_run",
    "max_table_fraction",
    "jump",
    "first_run",
)


def guard_for(schedule: CleanupSchedule, run: CleanupRun) -> Guard:
    """The guard a run of ``schedule`` calls before each deleting call's first batch."""
    known: list[tuple[list[int], bool]] = []

    def history() -> tuple[list[int], bool]:
        """The counts of its last succeeded runs, and whether this is its first run since it
        was created or its definition (task, params) changed: a change back is a change, so
        only the newest succeeded run tells."""
        if not known:
            runs = CleanupRun.objects.filter(
                schedule_id=run.schedule_id, status=Status.SUCCEEDED, dry_run=False
            ).exclude(pk=run.pk)
            newest = list(
                runs.order_by("-iteration").values_list("items_deleted", "config")[:HISTORY_RUNS]
            )
            config = run.config or {}
            first = not newest or not (
                isinstance(newest[0][1], dict)
                and newest[0][1].get("task") == config.get("task")
                and newest[0][1].get("params") == config.get("params")
            )
            known.append(([count for count, _ in newest], first))
        return known[0]

    def guard(
        label: str,
        counts: dict[str, int],
        table_rows: dict[str, int],
        sample: Callable[[], list[list[str]]],
    ) -> None:
        rules = broken_rules(schedule, counts, table_rows, history)
        if not rules:
            return
        rule, reason = rules[0]
        review = {
            "rule": rule,
            "reason": reason,
            "rules": [name for name, _ in rules],
            "counts": dict(counts),
            "table_rows": dict(table_rows),
            "sample_of": label,
            "sample": sample(),
        }
        raise HeldForReview(rule, reason, review)

    return guard


def broken_rules(
    schedule: CleanupSchedule,
    counts: dict[str, int],
    table_rows: dict[str, int],
    history: Callable[[], tuple[list[int], bool]],
) -> list[tuple[str, str]]:
    """Each rule the counts break, with a sentence for the person who decides."""
    total = sum(counts.values())
    broken = []
    limit = schedule.row_limit
    if limit and total > limit:
        broken.append((MAX_ROWS, f"would delete {total:,}, more than max_rows_per_run {limit:,}"))
    fraction = schedule.table_fraction_limit
    for label, rows in table_rows.items():
        count = counts.get(label, 0)
        if fraction and rows and count > SMALL_DELETION and count / rows > fraction:
            broken.append(
                (
                    TABLE_FRACTION,
                    f"would delete {count:,} of {label}'s {rows:,} rows ({count / rows:.0%}), "
                    f"more than max_table_fraction {fraction:g}",
                )
            )
    if total <= SMALL_DELETION:
        return broken
    past, first_run = history()
    factor = float(settings.CLEANUP_JUMP_FACTOR)
    if factor and past:
        median = statistics.median(past)
        if total > factor * median:
            broken.append(
                (
                    JUMP,
                    f"would delete {total:,}, more than {factor:g} times the median "
                    f"({median:,.0f}) of its last {len(past)} succeeded runs",
                )
            )
    review_rows = int(settings.CLEANUP_FIRST_RUN_REVIEW_ROWS)
    if first_run and review_rows and total > review_rows:
        broken.append(
            (
                FIRST_RUN,
                f"its first run since it was created or its task or params changed would "
                f"delete {total:,}, more than CLEANUP_FIRST_RUN_REVIEW_ROWS {review_rows:,}",
            )
        )
    return broken


def allowance(review: dict[str, Any]) -> tuple[dict[str, int], int]:
    """What an approval of a held run lets it delete: per target the count it showed plus
    CLEANUP_APPROVAL_SLACK (rows that aged into its window since), and the total."""
    slack = max(float(settings.CLEANUP_APPROVAL_SLACK), 0.0)
    per_target = {
        label: math.ceil(count * (1 + slack)) for label, count in review["counts"].items()
    }
    return per_target, sum(per_target.values())
