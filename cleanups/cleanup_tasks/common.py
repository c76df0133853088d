"""What the built-in tasks share."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from cleanups.registry import CleanupContext, Params, int_param

MAX_BATCH_SIZE = 100_000


def with_batch_size(cleaned: Params, params: Params) -> Params:
    """Add a given batch_size (rows per batch). Without one, batches size themselves to take
    about 50 ms each, which keeps locks short and per-batch overhead negligible."""
    if params.get("batch_size") is not None:
        cleaned["batch_size"] = int_param(params, "batch_size", 0, 1, MAX_BATCH_SIZE)
    return cleaned


def age_cutoff(days: float) -> datetime:
    return timezone.now() - timedelta(days=days)


def capped(ctx: CleanupContext) -> str:
    """A note for a run that stopped at the most its approval, or its row cap, allows."""
    if ctx.capped:
        return ", the most its approval allows (more are due)"
    if ctx.capped_by_row_cap and not ctx.dry_run:
        return f", the most one run deletes ({ctx.row_cap:,}); the next runs take the rest"
    return ""
