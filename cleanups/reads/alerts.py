"""What a schedule's page shows of its alerts."""

from __future__ import annotations

from typing import Any

from cleanups.alerts import targets
from cleanups.conf import settings
from cleanups.models import AlertDelivery, CleanupSchedule
from cleanups.webhooks import redact


def alert_overview(schedule: CleanupSchedule, failed: int = 5) -> dict[str, Any]:
    """Where its alerts go (redacted), the newest failed deliveries and the newest successful
    one."""
    deliveries = AlertDelivery.objects.filter(schedule=schedule)
    return {
        "webhooks": [redact(url) for url, site_wide in targets(schedule) if not site_wide],
        "site_wide": len(settings.ALERT_WEBHOOKS or []),
        "failed": list(deliveries.filter(status=AlertDelivery.Status.FAILED)[:failed]),
        "last_delivered": deliveries.filter(status=AlertDelivery.Status.DELIVERED).first(),
    }
