"""Schedule control for fleets: one statement writes the desired state of every selected
schedule, and the engine calls go to the bounded pool (cleanups.control.pool)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connections, transaction
from django.db.models import Case, F, QuerySet, Value, When
from django.utils import timezone

from cleanups import instances
from cleanups.conf import settings
from cleanups.control.common import (
    ENDED_BETWEEN_ATTEMPTS,
    PAUSED,
    RUNNING,
    STOPPED,
    first_run,
    interrupt_waiting_runs,
    next_iterations,
    overdue,
    restart_orchestration,
    split_refused,
    start_generation,
    terminated_reason,
)
from cleanups.control.outcomes import BulkOutcome, duration_words, plural, summary
from cleanups.control.pool import in_background
from cleanups.models import CleanupSchedule
from cleanups.runs.missed import record_overdue_slots
from cleanups.runs.records import dispatch_lead_seconds


def start_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Start every stopped schedule afresh (as start_schedule), resume every paused one."""
    selected = list(queryset.all())  # .all(): never a result cache from before
    paused = [s.pk for s in selected if s.desired_state == PAUSED]
    stopped, refused = split_refused([s for s in selected if s.desired_state == STOPPED])
    generation_before = {s.pk: s.generation for s in stopped}
    now = timezone.now()
    fresh = {
        "desired_state": RUNNING,
        "generation": F("generation") + 1,
        "start_iteration": next_iterations(),
        "status_reason": "",
        "recover_attempts": 0,
        "recovering_since": None,
    }
    by_interval = [s.pk for s in stopped if s.cadence != CleanupSchedule.Cadence.CRON]
    first = Case(When(start_at__gt=now, then=F("start_at")), default=Value(now))
    # One transaction: a reconciler pass never starts one of them before its spread-out first
    # run is written.
    with transaction.atomic():
        CleanupSchedule.objects.filter(pk__in=by_interval, desired_state=STOPPED).update(
            next_run_at=first, anchor_at=first, **fresh
        )
        for schedule in stopped:
            if schedule.cadence == CleanupSchedule.Cadence.CRON:  # its first time, one by one
                first_at = first_run(schedule)
                CleanupSchedule.objects.filter(pk=schedule.pk, desired_state=STOPPED).update(
                    next_run_at=first_at, anchor_at=first_at, **fresh
                )
        # Those this action started (not one that another started meanwhile):
        after = CleanupSchedule.objects.filter(pk__in=generation_before, desired_state=RUNNING)
        started_pks = [
            pk
            for pk, generation in after.values_list("pk", "generation")
            if generation == generation_before[pk] + 1
        ]
        ours = set(started_pks)
        spread = _spread_first_runs([s for s in stopped if s.pk in ours], now)
    started = len(started_pks)
    in_background(started_pks, lambda s: start_generation(s, trigger="scheduled"), RUNNING, True)
    resuming = resume_schedules(CleanupSchedule.objects.filter(pk__in=paused))
    resumed = resuming.changed
    refused_count = len(refused) + resuming.refused  # paused ones that cannot run either
    already = len(selected) - started - resumed - refused_count
    message = summary([(started, "starting"), (resumed, "resuming"), (already, "already running")])
    if spread >= timedelta(seconds=1):
        message += (
            f" Their first runs are spread over {duration_words(spread)}, so that they do not"
            " all fall due at once."
        )
    if refused_count:
        message += f" {plural(refused_count, 'schedule')} cannot run (see each one's status)."
    return BulkOutcome(started + resumed, already, message, refused_count)


def _spread_first_runs(started: list[CleanupSchedule], now: datetime) -> timedelta:
    """Give the interval schedules a bulk action started without a start_at of their own
    first runs (and so their fixed-rate grids) spread out, instead of all at ``now``: at most
    CLEANUP_BULK_START_RATE a second, and within one interval. A fleet started in one click
    would otherwise fall due at one instant at every interval, more runs at once than a worker
    starts on time. The spread begins one dispatch lead after ``now``, so that even the first
    of them is handed to its worker ahead, while the engine brings the fleet up, and starts on
    its time. Returns the time from the first of their first runs to the last."""
    rate = float(settings.CLEANUP_BULK_START_RATE)
    begin = now + timedelta(seconds=dispatch_lead_seconds())
    groups: dict[timedelta, list[CleanupSchedule]] = {}
    for schedule in started:
        if (
            rate > 0
            and schedule.cadence != CleanupSchedule.Cadence.CRON
            and schedule.interval
            and not (schedule.start_at and schedule.start_at > now)
        ):
            groups.setdefault(schedule.interval, []).append(schedule)
    changed, latest = [], timedelta(0)
    for interval, members in groups.items():
        # Evenly over the interval when more than `rate` a second would not fit in it.
        step = min(timedelta(seconds=1 / rate), interval / len(members))
        for position, schedule in enumerate(sorted(members, key=lambda s: s.pk)):
            schedule.next_run_at = schedule.anchor_at = begin + position * step
            changed.append(schedule)
            latest = max(latest, position * step)
    _write_first_runs(changed)
    return latest


def _write_first_runs(schedules: list[CleanupSchedule]) -> None:
    """Each schedule's next_run_at and anchor_at, one prepared UPDATE run for all of them
    (bulk_update's CASE per row cost 2 s at 10,000 schedules; this, a tenth of that)."""
    if not schedules:
        return
    meta = CleanupSchedule._meta
    connection = connections[CleanupSchedule.objects.db]
    quote = connection.ops.quote_name
    field, anchor = meta.get_field("next_run_at"), meta.get_field("anchor_at")
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {quote(field.column)} = %s,"
        f" {quote(anchor.column)} = %s WHERE {quote(meta.pk.column)} = %s"
    )
    rows = []
    for schedule in schedules:
        value = field.get_db_prep_value(schedule.next_run_at, connection)
        rows.append((value, value, schedule.pk))
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def pause_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Pause every running or paused schedule; each keeps its place."""
    live = queryset.exclude(desired_state=STOPPED)
    late = overdue(live)
    pks = list(live.values_list("pk", flat=True))
    paused = CleanupSchedule.objects.filter(pk__in=pks).update(
        desired_state=PAUSED, paused_at=timezone.now(), status_reason="Paused by an operator."
    )
    for schedule in late:
        record_overdue_slots(schedule)
    interrupt_waiting_runs(pks)
    in_background(pks, instances.suspend_if_live, PAUSED, False)
    unchanged = queryset.count() - paused
    return BulkOutcome(
        paused, unchanged, summary([(paused, "pausing"), (unchanged, "not running")])
    )


def resume_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Resume every paused schedule; slots missed while paused follow each one's policy."""
    paused, refused = split_refused(list(queryset.filter(desired_state=PAUSED)))
    pks = [s.pk for s in paused]
    resumed = CleanupSchedule.objects.filter(pk__in=pks, desired_state=PAUSED).update(
        desired_state=RUNNING,
        resumed_at=timezone.now(),
        status_reason="",
        consecutive_failures=0,
        failure_notified=False,
    )
    in_background(pks, instances.resume_or_start, RUNNING, False)
    unchanged = queryset.count() - resumed - len(refused)
    return BulkOutcome(
        resumed,
        unchanged,
        summary([(resumed, "resuming"), (unchanged, "not paused")]),
        len(refused),
    )


def terminate_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Stop every selected schedule and end its orchestration."""
    late = overdue(queryset)
    pks = list(queryset.values_list("pk", flat=True))
    was_alive = CleanupSchedule.objects.filter(pk__in=pks).exclude(desired_state=STOPPED).count()
    CleanupSchedule.objects.filter(pk__in=pks).update(
        desired_state=STOPPED,
        next_run_at=None,
        generation=F("generation") + 1,
        status_reason=terminated_reason(),
    )
    for schedule in late:
        record_overdue_slots(schedule)
    interrupt_waiting_runs(pks, ENDED_BETWEEN_ATTEMPTS)
    in_background(pks, instances.terminate_if_live, STOPPED, True)
    unchanged = len(pks) - was_alive
    return BulkOutcome(
        was_alive, unchanged, summary([(was_alive, "terminating"), (unchanged, "not running")])
    )


def restart_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Terminate and start afresh every selected schedule (the count going on)."""
    fine, refused = split_refused(list(queryset.all()))
    late = {s.pk: s for s in overdue(CleanupSchedule.objects.filter(pk__in=[s.pk for s in fine]))}
    pks = [s.pk for s in fine]
    restarted = CleanupSchedule.objects.filter(pk__in=pks).update(
        desired_state=RUNNING, next_run_at=timezone.now(), generation=F("generation") + 1
    )
    interrupt_waiting_runs(pks, ENDED_BETWEEN_ATTEMPTS)

    def restart(schedule: CleanupSchedule) -> None:
        if schedule.pk in late:
            record_overdue_slots(late[schedule.pk])
        restart_orchestration(schedule)

    in_background(pks, restart, RUNNING, True)
    return BulkOutcome(restarted, 0, summary([(restarted, "restarting")]), len(refused))


def run_schedules_now(queryset: QuerySet[CleanupSchedule], user: str = "") -> BulkOutcome:
    """One extra run of every running schedule, recorded as manual by ``user``."""
    pks = list(queryset.filter(desired_state=RUNNING).values_list("pk", flat=True))
    in_background(pks, lambda schedule: instances.raise_run_now(schedule, user), RUNNING, False)
    unchanged = queryset.count() - len(pks)
    message = summary([(len(pks), "running once now"), (unchanged, "not running")])
    return BulkOutcome(len(pks), unchanged, message)
