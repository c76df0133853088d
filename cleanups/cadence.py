"""When a schedule runs next: pure functions of the schedule's settings and a moment in time.

No clock is read here; callers pass the moments in, so the same inputs always give the same
answer (the orchestration's history replays to the same timers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter
from django.utils import timezone

FIXED_DELAY, FIXED_RATE, CRON = "fixed_delay", "fixed_rate", "cron"
# Far from datetime's end (9999-12-31), so no run time, timer or time-zone shift overflows.
LATEST_YEAR = 9000
# The shortest interval a schedule may have.
MIN_INTERVAL = timedelta(seconds=1)
MAX_INTERVAL = timedelta(days=366)
_Result = TypeVar("_Result")


class UncomputableRun(ValueError):
    """The next run time cannot be computed: a cron that never fires, a date off the calendar."""


def _computing(method: Callable[..., _Result]) -> Callable[..., _Result]:
    """Whatever the arithmetic or the cron library raises becomes UncomputableRun, with why."""

    @functools.wraps(method)
    def compute(self: Cadence, *args: Any, **kwargs: Any) -> _Result:
        try:
            return method(self, *args, **kwargs)
        except UncomputableRun:
            raise
        except (ValueError, ArithmeticError, LookupError, TypeError) as error:
            raise UncomputableRun(self.explain(error)) from error

    return compute


@dataclass(frozen=True)
class Cadence:
    kind: str
    interval: timedelta
    anchor: datetime | None = None  # fixed_rate: the grid is anchor + k * interval
    cron: str = ""
    timezone: str = "UTC"
    # Runs only between these wall-clock times in ``timezone`` (None: at any time); the end
    # before the start crosses midnight.
    window: Window | None = None

    @_computing
    def next_after(self, moment: datetime, finished: datetime | None = None) -> datetime:
        """The first fire time strictly after ``moment`` (fixed_delay: ``finished`` + interval),
        moved to the window's opening when it falls outside the window.

        Raises UncomputableRun when there is none.
        """
        if self.kind == FIXED_DELAY:
            following = (finished or moment) + self.interval
        elif self.kind == FIXED_RATE:
            anchor = self.anchor or moment
            steps = math.floor((moment - anchor) / self.interval) + 1
            following = anchor + max(steps, 0) * self.interval
        else:
            following = cron_next(self.cron, self.timezone, moment)
        if self.window is not None:
            following = self.window.opening(following, ZoneInfo(self.timezone))
        if following.year >= LATEST_YEAR:
            raise UncomputableRun(f"the next run would fall in or after the year {LATEST_YEAR}")
        return following

    @_computing
    def into_window(self, moment: datetime) -> datetime:
        """``moment``, or the window's next opening when it falls outside the window."""
        if self.window is None:
            return moment
        return self.window.opening(moment, ZoneInfo(self.timezone))

    def explain(self, error: Exception) -> str:
        """Why a run time could not be computed, in words an operator can act on."""
        if isinstance(error, CroniterBadDateError):
            return f"the cron expression {self.cron!r} never fires"
        if isinstance(error, CroniterError):
            return f"{self.cron!r} is not a valid cron expression ({error})"
        if isinstance(error, ZoneInfoNotFoundError):
            return f"{self.timezone!r} is not a known time zone"
        if isinstance(error, OverflowError):
            return f"a run time falls off the calendar ({error})"
        return f"{type(error).__name__}: {error}"

    @_computing
    def slots_between(self, start: datetime, end: datetime, limit: int = 100_000) -> int:
        """How many fire times fall in (start, end] (counted up to ``limit``)."""
        if self.window is not None:
            return self._count_between(start, end, min(limit, WINDOWED_COUNT_LIMIT))
        if self.kind == FIXED_RATE:
            first = self.next_after(start)
            if first > end:
                return 0
            return min(limit, math.floor((end - first) / self.interval) + 1)
        if self.kind == FIXED_DELAY:
            return min(limit, max(0, math.floor((end - start) / self.interval)))
        return self._count_between(start, end, limit)

    def _count_between(self, start: datetime, end: datetime, limit: int) -> int:
        count, moment = 0, start
        while count < limit:
            moment = self.next_after(moment, moment)
            if moment > end:
                break
            count += 1
        return count

    @_computing
    def upcoming(self, moment: datetime, count: int = 5) -> list[datetime]:
        times, current = [], moment
        for _ in range(count):
            current = self.next_after(current, current)
            times.append(current)
        return times


# Counting the slots of a windowed cadence walks them one by one: this many at most.
WINDOWED_COUNT_LIMIT = 10_000


@dataclass(frozen=True)
class Window:
    """Wall-clock hours a schedule may run in: [start, end), across midnight when end < start."""

    start: time
    end: time

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def opening(self, moment: datetime, zone: ZoneInfo) -> datetime:
        """``moment`` itself when it is inside the window, otherwise the window's next opening."""
        local = moment.astimezone(zone)
        if self.contains(local.time().replace(tzinfo=None)):
            return moment
        opens = datetime.combine(local.date(), self.start, tzinfo=zone)
        if opens <= local:
            opens = datetime.combine(local.date() + timedelta(days=1), self.start, tzinfo=zone)
        return opens.astimezone(moment.tzinfo or zone)

    def closing(self, moment: datetime, zone: ZoneInfo) -> datetime | None:
        """When the window that ``moment`` is in closes (None: ``moment`` is outside it)."""
        local = moment.astimezone(zone)
        clock = local.time().replace(tzinfo=None)
        if not self.contains(clock):
            return None
        day = local.date()
        if self.end < self.start and clock >= self.start:
            day += timedelta(days=1)  # opened tonight, closes tomorrow morning
        return datetime.combine(day, self.end, tzinfo=zone).astimezone(moment.tzinfo or zone)

    def describe(self, zone_name: str) -> str:
        """The line the cadence previews show under the next run times."""
        return (
            f"Runs only from {self.start:%H:%M} to {self.end:%H:%M} ({zone_name}); "
            "a run due outside waits."
        )


def window_of(schedule: object) -> Window | None:
    """A schedule's run window, when it has both ends (and they differ)."""
    start, end = getattr(schedule, "window_start", None), getattr(schedule, "window_end", None)
    if start is None or end is None or start == end:
        return None
    return Window(start, end)


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
    """The next ``count`` run times a schedule (saved or not) would have, from ``moment``.

    Raises UncomputableRun (a ValueError) when they cannot be computed.
    """
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
        window=window_of(schedule),
    )
    if rule.kind == CRON and not cron_is_valid(rule.cron):
        raise UncomputableRun(f"{rule.cron!r} is not a valid 5-field cron expression.")
    times = rule.upcoming(moment, count)
    end_at = getattr(schedule, "end_at", None)
    return [t for t in times if end_at is None or t <= end_at]
