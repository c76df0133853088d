"""Other ways of doing cleanups.registry.delete_in_batches, measured by delete_rows.py --variants.

Nothing here is used by the project: each variant is swapped in for the delete_old_rows task in
the benchmark's process only. The SQL cascade path that used to be measured here now lives in
delete_in_batches itself; its baseline, the collector alone, stays here for comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

from django.db import models

from cleanups.registry import CleanupContext
from cleanups.tasks import deleter


def delete_in_batches_collector_only(
    ctx: CleanupContext, queryset: models.QuerySet[Any], batch_size: int | None = None
) -> None:
    """delete_in_batches with Django's collector for every cascade (no SQL cascade path)."""
    with mock.patch.object(deleter, "sql_cascade_plan", return_value=None):
        deleter.delete_in_batches(ctx, queryset, batch_size)


VARIANTS: dict[str, Callable[[CleanupContext, models.QuerySet[Any], int | None], None]] = {
    "variant: collector only": delete_in_batches_collector_only,
}
