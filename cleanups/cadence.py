"""When a schedule runs next: pure functions of the schedule's settings and a moment in time.

No clock is read here; callers pass the moments in, so the same inputs always give the same
answer (the orchestration's history replays to the same timers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

FIXED_DELAY, FIXED_RATE, CRON = "fixed_delay", "fixed_rate", "cron"


@dataclass(frozen=True)
class Cadence:
    kind: str
    interval: timedelta
    anchor: datetime | None = None  # fixed_rate: the grid is anchor + k * interval
    cron: str = ""
    timezone: str = "UTC"

    def next_after(self, moment: datetime, finished: datetime | None = None) -> datetime:
        """The first fire time strictly after ``moment`` (fixed_delay: ``finished`` + interval)."""
        if self.kind == FIXED_DELAY:
            return (finished or moment) + self.interval
        if self.kind == FIXED_RATE:
            anchor = self.anchor or moment
            steps = math.floor((moment - anchor) / self.interval) + 1
            return anchor + max(steps, 0) * self.interval
        return cron_next(self.cron, self.timezone, moment)

    def slots_between(self, start: datetime, end: datetime, limit: int = 100_000) -> int:
        """How many fire times fall in (start, end] (counted up to ``limit``)."""
        if self.kind == FIXED_RATE:
            first = self.next_after(start)
            if first > end:
                return 0
            return min(limit, math.floor((end - first) / self.interval) + 1)
        if self.kind == FIXED_DELAY:
            return min(limit, max(0, math.floor((end - start) / self.interval)))
        count, moment = 0, start
        while count < limit:
            moment = cron_next(self.cron, self.timezone, moment)
            if moment > end:
                break
            count += 1
        return count

    def upcoming(self, moment: datetime, count: int = 5) -> list[datetime]:
        times, current = [], moment
        for _ in range(count):
            current = self.next_after(current, current)
            times.append(current)
        return times


def cron_next(expression: str, timezone_name: str, moment: datetime) -> datetime:
    """The next time the 5-field cron expression fires after ``moment``, in the given zone.

    Evaluated on local wall-clock time in ``timezone_name``; across DST changes it does what
    croniter documents: a time that does not exist that night fires at the first moment after
    the jump, and a time that happens twice fires at both.
    """
    zone = ZoneInfo(timezone_name)
    local = moment.astimezone(zone)
    following = croniter(expression, local).get_next(datetime)
    return following.astimezone(moment.tzinfo or zone)


def cron_is_valid(expression: str) -> bool:
    return len(expression.split()) == 5 and croniter.is_valid(expression)


def preview_times(
    schedule: object, moment: datetime | None = None, count: int = 5
) -> list[datetime]:
    """The next ``count`` run times a schedule (saved or not) would have, from ``moment``."""
    from django.utils import timezone

    moment = moment or timezone.now()
    start_at = getattr(schedule, "start_at", None)
    if start_at and start_at > moment:
        moment = start_at
    rule = Cadence(
        kind=schedule.cadence,  # type: ignore[attr-defined]
        interval=schedule.interval,  # type: ignore[attr-defined]
        anchor=getattr(schedule, "anchor_at", None) or start_at or moment,
        cron=schedule.cron,  # type: ignore[attr-defined]
        timezone=schedule.timezone,  # type: ignore[attr-defined]
    )
    if rule.kind == CRON and not cron_is_valid(rule.cron):
        raise ValueError(f"{rule.cron!r} is not a valid 5-field cron expression.")
    times = rule.upcoming(moment, count)
    end_at = getattr(schedule, "end_at", None)
    return [t for t in times if end_at is None or t <= end_at]
