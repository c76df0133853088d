"""Schedule control: write the desired state first, then ask the engine. No request needed.

An engine that cannot be reached is an outcome, not an exception: the desired state is
already recorded and runworker's reconciler finishes the job once the engine is back.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
from django.db import connections, transaction
from django.db.models import Case, F, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone
from durabletask import client as dt_client
from durabletask.internal import orchestrator_service_pb2 as pb

from cleanups.cadence import UncomputableRun
from cleanups.conf import settings
from cleanups.durable.activities import dispatch_lead_seconds, record_overdue_slots
from cleanups.durable.connection import get_client
from cleanups.durable.orchestrations import RUN_NOW_EVENT
from cleanups.models import INSTANCE_ID_PREFIX, CleanupRun, CleanupSchedule

logger = logging.getLogger("cleanups.control")
RUNNING = CleanupSchedule.DesiredState.RUNNING
PAUSED = CleanupSchedule.DesiredState.PAUSED
STOPPED = CleanupSchedule.DesiredState.STOPPED

ORCHESTRATION_NAME = "periodic_cleanup"
Status = dt_client.OrchestrationStatus
LIVE_STATUSES = frozenset(
    {Status.RUNNING, Status.PENDING, Status.SUSPENDED, Status.CONTINUED_AS_NEW}
)
# A schedule's instance id is reused for every start: a finished instance may be replaced,
# a live one never (the engine answers ALREADY_EXISTS).
_REPLACE_FINISHED = pb.OrchestrationIdReusePolicy(
    replaceableStatus=[
        pb.ORCHESTRATION_STATUS_COMPLETED,
        pb.ORCHESTRATION_STATUS_FAILED,
        pb.ORCHESTRATION_STATUS_TERMINATED,
    ]
)
# CANCELLED: the engine's server shutting down under a call (a runworker stopping).
_UNREACHABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


# Why a schedule is stopped, once an operator ended it (an earlier "Paused by an operator." or
# failure reason would otherwise stay on it).
TERMINATED_BY_OPERATOR = "Terminated by an operator."


def _terminated_reason() -> Any:
    """The reason a terminate leaves: the operator's, unless the schedule was stopped already
    (then its own, "Completed after ..." say, stays). SQL reads the row as it was before."""
    return Case(
        When(
            ~Q(desired_state=CleanupSchedule.DesiredState.STOPPED),
            then=Value(TERMINATED_BY_OPERATOR),
        ),
        default=F("status_reason"),
    )


class EngineUnavailable(Exception):
    """The Durable Task engine could not be reached."""


@contextmanager
def engine_call() -> Iterator[None]:
    """Turn 'cannot reach the engine' gRPC errors into EngineUnavailable."""
    try:
        yield
    except grpc.RpcError as error:
        if error.code() in _UNREACHABLE_CODES:  # type: ignore[attr-defined]
            raise EngineUnavailable(str(error.details())) from error  # type: ignore[attr-defined]
        raise


class Outcome(enum.Enum):
    STARTED = "started"
    ALREADY_RUNNING = "already running"
    TERMINATED = "terminated"
    PAUSED = "paused"
    RESUMED = "resumed"
    RUN_REQUESTED = "run requested"
    NOT_RUNNING = "not running"
    REFUSED = "refused"  # it cannot run as defined: stopped, with why
    ENGINE_UNREACHABLE = "engine unreachable"


@dataclass(frozen=True)
class ControlOutcome:
    schedule: CleanupSchedule
    outcome: Outcome
    message: str


def start_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Mark the schedule running and start its orchestration unless one is already live.

    The fresh start's bookkeeping (anchor, start_iteration, first run, a new generation) is
    written with the desired state in one UPDATE before the engine call, so a reconciler pass
    that reaches the engine first starts exactly this start, and it is reported as STARTED.
    """
    if schedule.desired_state == CleanupSchedule.DesiredState.PAUSED:
        return resume_schedule(schedule)  # its orchestration keeps its place
    if refused := _refuse_if_it_cannot_run(schedule):
        return refused
    try:
        with engine_call():
            _, state = _engine_state(schedule)
    except EngineUnavailable:
        state = None
    live = state is not None and state.runtime_status in LIVE_STATUSES
    if live and schedule.is_alive:
        _set_desired_state(schedule, CleanupSchedule.DesiredState.RUNNING)
        return _already_running(schedule)
    try:
        first_run = _first_run(schedule)
    except UncomputableRun as error:
        return stop_for_its_cadence(schedule, f"cannot compute the next run: {error}")
    _new_generation(
        schedule,
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        start_iteration=schedule.next_iteration(),
        next_run_at=first_run,
        anchor_at=first_run,
        status_reason="",
        recover_attempts=0,
        recovering_since=None,
    )
    try:
        return _start_generation(schedule, trigger="scheduled")
    except EngineUnavailable:
        return _unreachable(schedule, "running")


def _first_run(schedule: CleanupSchedule) -> datetime:
    """A fresh start runs at once, or at start_at; a cron schedule at its first time after."""
    now = timezone.now()
    first_run = schedule.start_at if schedule.start_at and schedule.start_at > now else now
    if schedule.cadence == CleanupSchedule.Cadence.CRON:
        first_run = schedule.cadence_rule().next_after(first_run)
    return first_run


def _new_generation(schedule: CleanupSchedule, **fields: Any) -> None:
    """An operator action: its fields and a new generation in one UPDATE. An orchestration of
    an older generation stops before its next run (the activity compares)."""
    CleanupSchedule.objects.filter(pk=schedule.pk).update(generation=F("generation") + 1, **fields)
    schedule.refresh_from_db()


def _start_generation(schedule: CleanupSchedule, trigger: str) -> ControlOutcome:
    """Start the schedule's current generation (the caller found none live), replacing a live
    orchestration of an older one (an action that raced this one and lost: the last operator
    action wins)."""
    outcome = start_orchestration(schedule, trigger=trigger, known_not_live=True)
    if outcome.outcome is Outcome.ALREADY_RUNNING:
        with engine_call():
            end_orchestration(get_client(), schedule, "superseded by a newer start")
        outcome = start_orchestration(schedule, trigger=trigger)
    return outcome


def end_orchestration(
    client: dt_client.TaskHubGrpcClient, schedule: CleanupSchedule, why: str, timeout: int = 30
) -> None:
    """Terminate the schedule's orchestration and wait until the engine has ended it, so a new
    one can take its instance id. Raises TimeoutError if it does not end in ``timeout`` s."""
    client.terminate_orchestration(schedule.instance_id, output=why, recursive=False)
    client.wait_for_orchestration_completion(
        schedule.instance_id, fetch_payloads=False, timeout=timeout
    )


def terminate_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Mark the schedule stopped and terminate its orchestration if it is live."""
    before = CleanupSchedule.objects.filter(pk=schedule.pk).first() or schedule
    _new_generation(
        schedule,
        desired_state=CleanupSchedule.DesiredState.STOPPED,
        next_run_at=None,
        status_reason=_terminated_reason(),
    )
    record_overdue_slots(before)
    _interrupt_waiting_runs([schedule.pk], ENDED_BETWEEN_ATTEMPTS)
    try:
        if not _terminate(schedule):
            return ControlOutcome(schedule, Outcome.NOT_RUNNING, f"“{schedule}” was not running.")
    except EngineUnavailable:
        return _unreachable(schedule, "stopped")
    return ControlOutcome(schedule, Outcome.TERMINATED, f"“{schedule}” terminated.")


def start_orchestration(
    schedule: CleanupSchedule, *, trigger: str = "scheduled", known_not_live: bool = False
) -> ControlOutcome:
    """Start the schedule's orchestration as the database describes it, its count going on.

    The input comes from the schedule's row alone (its generation, next iteration and planned
    next run; an operator's start wrote its fresh bookkeeping there first), so the operator's
    call and a reconciler pass build the same start, and whichever reaches the engine second
    finds it live with its own generation: STARTED for both. A live orchestration of another
    generation is ALREADY_RUNNING. ``known_not_live``: the caller has just asked the engine.
    Raises EngineUnavailable.
    """
    iteration = schedule.next_iteration()
    orchestration_input: dict[str, object] = {
        "schedule_id": schedule.pk,
        "iteration": iteration,
        "trigger": trigger,
        "max_retries": schedule.max_retries,
        "max_run_seconds": schedule.run_limit,
        "generation": schedule.generation,
        "lead_seconds": dispatch_lead_seconds(),
    }
    if trigger == "scheduled" and schedule.next_run_at:
        orchestration_input["run_at"] = schedule.next_run_at.isoformat()
    started = ControlOutcome(
        schedule, Outcome.STARTED, f"“{schedule}” started at iteration {iteration}."
    )
    with engine_call():
        client = get_client()
        state = (
            None
            if known_not_live
            else client.get_orchestration_state(schedule.instance_id, fetch_payloads=False)
        )
        if state is None or state.runtime_status not in LIVE_STATUSES:
            try:
                client.schedule_new_orchestration(
                    ORCHESTRATION_NAME,
                    input=orchestration_input,
                    instance_id=schedule.instance_id,
                    reuse_id_policy=_REPLACE_FINISHED,
                )
                return started
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                    raise
        if live_generation(client, schedule) == schedule.generation:
            return started
    return _already_running(schedule)


def live_generation(client: dt_client.TaskHubGrpcClient, schedule: CleanupSchedule) -> Any:
    """The generation a live orchestration of the schedule was started with (None: unknown)."""
    state = client.get_orchestration_state(schedule.instance_id, fetch_payloads=True)
    if state is None or state.runtime_status not in LIVE_STATUSES:
        return None
    try:
        return json.loads(state.serialized_input or "{}").get("generation")
    except (ValueError, AttributeError):
        return None


def pause_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Suspend the schedule's orchestration; it keeps its place and resumes where it was."""
    if schedule.desired_state == CleanupSchedule.DesiredState.STOPPED:
        return ControlOutcome(schedule, Outcome.NOT_RUNNING, f"“{schedule}” is not running.")
    record_overdue_slots(CleanupSchedule.objects.filter(pk=schedule.pk).first() or schedule)
    now = timezone.now()
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        desired_state=CleanupSchedule.DesiredState.PAUSED,
        paused_at=now,
        status_reason="Paused by an operator.",
    )
    schedule.desired_state = CleanupSchedule.DesiredState.PAUSED
    _interrupt_waiting_runs([schedule.pk])
    try:
        _suspend(schedule)
    except EngineUnavailable:
        return _unreachable(schedule, "paused")
    return ControlOutcome(schedule, Outcome.PAUSED, f"“{schedule}” paused.")


def resume_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Resume a paused schedule; slots missed while paused follow the missed-run policy."""
    if schedule.desired_state != CleanupSchedule.DesiredState.PAUSED:
        return ControlOutcome(schedule, Outcome.NOT_RUNNING, f"“{schedule}” is not paused.")
    if refused := _refuse_if_it_cannot_run(schedule):
        return refused
    now = timezone.now()
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        resumed_at=now,
        status_reason="",
        consecutive_failures=0,
        failure_notified=False,
    )
    schedule.desired_state = CleanupSchedule.DesiredState.RUNNING
    schedule.resumed_at = now
    try:
        _resume_or_start(schedule)
    except EngineUnavailable:
        return _unreachable(schedule, "running")
    return ControlOutcome(schedule, Outcome.RESUMED, f"“{schedule}” resumed.")


def run_now(schedule: CleanupSchedule, user: str = "") -> ControlOutcome:
    """One extra run right away, without moving the schedule's next run."""
    if schedule.desired_state != CleanupSchedule.DesiredState.RUNNING:
        return ControlOutcome(
            schedule, Outcome.NOT_RUNNING, f"“{schedule}” is not running; start or resume it first."
        )
    if refused := _refuse_if_it_cannot_run(schedule):
        return refused
    try:
        with engine_call():
            client, state = _engine_state(schedule)
            if state is None or state.runtime_status not in LIVE_STATUSES:
                return ControlOutcome(
                    schedule, Outcome.NOT_RUNNING, f"“{schedule}” has no live orchestration yet."
                )
            client.raise_orchestration_event(schedule.instance_id, RUN_NOW_EVENT, data={"by": user})
    except EngineUnavailable:
        return _unreachable(schedule, "running")
    return ControlOutcome(schedule, Outcome.RUN_REQUESTED, f"“{schedule}”: run requested.")


def restart_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Terminate the orchestration and start a fresh one (new history, the count going on):
    it runs at once, then on its cadence."""
    if refused := _refuse_if_it_cannot_run(schedule):
        return refused
    # next_run_at now: a reconciler pass that starts this generation first runs it at once too.
    before = CleanupSchedule.objects.filter(pk=schedule.pk).first() or schedule
    _new_generation(
        schedule, desired_state=CleanupSchedule.DesiredState.RUNNING, next_run_at=timezone.now()
    )
    record_overdue_slots(before)
    _interrupt_waiting_runs([schedule.pk], ENDED_BETWEEN_ATTEMPTS)
    try:
        outcome = _restart_orchestration(schedule)
    except (EngineUnavailable, TimeoutError):
        return _unreachable(schedule, "running")
    if outcome.outcome is not Outcome.STARTED:
        return outcome
    return ControlOutcome(schedule, Outcome.STARTED, f"“{schedule}” restarted.")


def stop_for_its_cadence(schedule: CleanupSchedule, problem: str) -> ControlOutcome:
    """Record a schedule whose next run cannot be computed as stopped, with why. Never started
    again until an operator fixes it; the reconciler ends an orchestration still live."""
    schedule.stop_because(problem)
    return ControlOutcome(
        schedule,
        Outcome.REFUSED,
        f"“{schedule}” cannot run: {problem}. Fix its cadence, then start it again.",
    )


def _refuse_if_it_cannot_run(schedule: CleanupSchedule) -> ControlOutcome | None:
    """A definition that cannot work (edited behind validation's back, or a cron library that
    changed its mind) is stopped with the reason instead of started: it would only fail."""
    problem = schedule.next_run_problem()
    return stop_for_its_cadence(schedule, problem) if problem else None


def _engine_state(
    schedule: CleanupSchedule,
) -> tuple[dt_client.TaskHubGrpcClient, dt_client.OrchestrationState | None]:
    """The client, and the engine's state of the schedule's orchestration (None: no instance)."""
    client = get_client()
    return client, client.get_orchestration_state(schedule.instance_id, fetch_payloads=False)


def _already_running(schedule: CleanupSchedule) -> ControlOutcome:
    return ControlOutcome(
        schedule, Outcome.ALREADY_RUNNING, f"“{schedule}” is already running; nothing new started."
    )


def _unreachable(schedule: CleanupSchedule, state: str) -> ControlOutcome:
    return ControlOutcome(
        schedule,
        Outcome.ENGINE_UNREACHABLE,
        f"“{schedule}”: engine unreachable. Recorded as {state}; the worker acts on it when "
        "the engine is back.",
    )


def fetch_runtime_states(
    instance_ids: Iterable[str] | None = None,
) -> dict[str, dt_client.OrchestrationState]:
    """The engine's state of our instances, in one query. Raises EngineUnavailable."""
    query = dt_client.OrchestrationQuery(
        instance_id_prefix=INSTANCE_ID_PREFIX, fetch_inputs_and_outputs=False
    )
    with engine_call():
        states = get_client().get_all_orchestration_states(query)
    by_id = {state.instance_id: state for state in states}
    if instance_ids is None:
        return by_id
    wanted = set(instance_ids)
    return {instance_id: state for instance_id, state in by_id.items() if instance_id in wanted}


def runtime_status_label(state: dt_client.OrchestrationState | None) -> str:
    if state is None:
        return "not started"
    return str(state.runtime_status).lower().replace("_", " ")


def _set_desired_state(schedule: CleanupSchedule, desired: str) -> None:
    schedule.desired_state = desired
    fields: dict[str, object] = {"desired_state": desired}
    if desired == CleanupSchedule.DesiredState.STOPPED:
        schedule.next_run_at = None
        fields["next_run_at"] = None
    CleanupSchedule.objects.filter(pk=schedule.pk).update(**fields)


# --- Fleets: one statement for the desired state, the engine calls on a bounded pool ---------
#
# An action on thousands of schedules must answer at once: the request writes what the operator
# asked for in one UPDATE and returns; a small pool of threads makes the engine calls. Whatever
# the pool does not finish (the process stops, the engine is away), the worker's reconciler does
# from the desired state, as after any other action.

BULK_ENGINE_THREADS = 8
_BULK_CHUNK = 50
_engine_pool = ThreadPoolExecutor(
    max_workers=BULK_ENGINE_THREADS, thread_name_prefix="cleanups-bulk"
)
_in_flight: set[Future[None]] = set()
_in_flight_lock = threading.Lock()


@dataclass(frozen=True)
class BulkOutcome:
    """What a bulk action did: how many schedules it applies to and one line for the operator."""

    changed: int
    unchanged: int
    message: str
    refused: int = 0


def wait_for_bulk_engine_calls(timeout: float | None = None) -> bool:
    """Wait until the pool has made every engine call handed to it; False on timeout."""
    with _in_flight_lock:
        pending = set(_in_flight)
    _, not_done = futures_wait(pending, timeout=timeout)
    return not not_done


def _in_background(
    pks: list[int], call: Callable[[CleanupSchedule], object], state: str, new_generation: bool
) -> None:
    """``call`` for each schedule, on the pool, as long as it is still as the action left it
    (``state``, and the generation it wrote): a later action supersedes this one."""
    generations = (
        dict(CleanupSchedule.objects.filter(pk__in=pks).values_list("pk", "generation"))
        if new_generation
        else None
    )
    for start in range(0, len(pks), _BULK_CHUNK):
        chunk = pks[start : start + _BULK_CHUNK]
        future = _engine_pool.submit(_engine_calls, chunk, call, state, generations)
        with _in_flight_lock:
            _in_flight.add(future)
        future.add_done_callback(_forget)


def _forget(future: Future[None]) -> None:
    with _in_flight_lock:
        _in_flight.discard(future)


def _engine_calls(
    pks: list[int],
    call: Callable[[CleanupSchedule], object],
    state: str,
    generations: dict[int, int] | None,
) -> None:
    try:
        for schedule in CleanupSchedule.objects.filter(pk__in=pks, desired_state=state):
            if generations is not None and schedule.generation != generations.get(schedule.pk):
                continue
            try:
                call(schedule)
            except EngineUnavailable:
                return  # the reconciler acts on the desired state once the engine is back
            except Exception:  # one schedule's failure must not stop the others'
                logger.exception("bulk action: engine call for %s failed", schedule)
    finally:
        connections.close_all()


def _plural(count: int, what: str) -> str:
    return f"{count:,} {what}{'' if count == 1 else 's'}"


def _summary(parts: list[tuple[int, str]]) -> str:
    said = [f"{_plural(count, 'schedule')} {verb}" for count, verb in parts if count]
    return "; ".join(said) + "." if said else "Nothing to do."


def _overdue(queryset: QuerySet[CleanupSchedule]) -> list[CleanupSchedule]:
    """Running schedules whose planned run is overdue (read before an action changes them)."""
    cutoff = timezone.now() - timedelta(seconds=settings.MISSED_RUN_GRACE_SECONDS)
    return list(queryset.filter(desired_state=RUNNING, next_run_at__lt=cutoff))


def _next_iterations() -> Any:
    newest = Subquery(
        CleanupRun.objects.filter(schedule=OuterRef("pk"))
        .order_by("-iteration")
        .values("iteration")[:1]
    )
    return Greatest(F("current_iteration"), Coalesce(newest, Value(0))) + 1


def _split_refused(
    schedules: list[CleanupSchedule],
) -> tuple[list[CleanupSchedule], list[CleanupSchedule]]:
    """Those that can run, and those stopped (with why) because their next run cannot be
    computed."""
    fine, refused = [], []
    for schedule in schedules:
        (refused if _refuse_if_it_cannot_run(schedule) else fine).append(schedule)
    return fine, refused


def start_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Start every stopped schedule afresh (as start_schedule), resume every paused one."""
    selected = list(queryset.all())  # .all(): never a result cache from before
    paused = [s.pk for s in selected if s.desired_state == PAUSED]
    stopped, refused = _split_refused([s for s in selected if s.desired_state == STOPPED])
    generation_before = {s.pk: s.generation for s in stopped}
    now = timezone.now()
    fresh = {
        "desired_state": RUNNING,
        "generation": F("generation") + 1,
        "start_iteration": _next_iterations(),
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
                first_run = _first_run(schedule)
                CleanupSchedule.objects.filter(pk=schedule.pk, desired_state=STOPPED).update(
                    next_run_at=first_run, anchor_at=first_run, **fresh
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
    _in_background(started_pks, lambda s: _start_generation(s, trigger="scheduled"), RUNNING, True)
    resuming = resume_schedules(CleanupSchedule.objects.filter(pk__in=paused))
    resumed = resuming.changed
    refused_count = len(refused) + resuming.refused  # paused ones that cannot run either
    already = len(selected) - started - resumed - refused_count
    message = _summary([(started, "starting"), (resumed, "resuming"), (already, "already running")])
    if spread >= timedelta(seconds=1):
        message += (
            f" Their first runs are spread over {_duration(spread)}, so that they do not all"
            " fall due at once."
        )
    if refused_count:
        message += f" {_plural(refused_count, 'schedule')} cannot run (see each one's status)."
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


def _duration(span: timedelta) -> str:
    seconds = round(span.total_seconds())
    if seconds < 120:
        return _plural(seconds, "second")
    if seconds < 7200:
        return _plural(round(seconds / 60), "minute")
    return _plural(round(seconds / 3600), "hour")


def pause_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Pause every running or paused schedule; each keeps its place."""
    live = queryset.exclude(desired_state=STOPPED)
    overdue = _overdue(live)
    pks = list(live.values_list("pk", flat=True))
    paused = CleanupSchedule.objects.filter(pk__in=pks).update(
        desired_state=PAUSED, paused_at=timezone.now(), status_reason="Paused by an operator."
    )
    for schedule in overdue:
        record_overdue_slots(schedule)
    _interrupt_waiting_runs(pks)
    _in_background(pks, _suspend, PAUSED, False)
    unchanged = queryset.count() - paused
    return BulkOutcome(
        paused, unchanged, _summary([(paused, "pausing"), (unchanged, "not running")])
    )


def resume_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Resume every paused schedule; slots missed while paused follow each one's policy."""
    paused, refused = _split_refused(list(queryset.filter(desired_state=PAUSED)))
    pks = [s.pk for s in paused]
    resumed = CleanupSchedule.objects.filter(pk__in=pks, desired_state=PAUSED).update(
        desired_state=RUNNING,
        resumed_at=timezone.now(),
        status_reason="",
        consecutive_failures=0,
        failure_notified=False,
    )
    _in_background(pks, _resume_or_start, RUNNING, False)
    unchanged = queryset.count() - resumed - len(refused)
    return BulkOutcome(
        resumed,
        unchanged,
        _summary([(resumed, "resuming"), (unchanged, "not paused")]),
        len(refused),
    )


def terminate_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Stop every selected schedule and end its orchestration."""
    overdue = _overdue(queryset)
    pks = list(queryset.values_list("pk", flat=True))
    was_alive = CleanupSchedule.objects.filter(pk__in=pks).exclude(desired_state=STOPPED).count()
    CleanupSchedule.objects.filter(pk__in=pks).update(
        desired_state=STOPPED,
        next_run_at=None,
        generation=F("generation") + 1,
        status_reason=_terminated_reason(),
    )
    for schedule in overdue:
        record_overdue_slots(schedule)
    _interrupt_waiting_runs(pks, ENDED_BETWEEN_ATTEMPTS)
    _in_background(pks, _terminate, STOPPED, True)
    unchanged = len(pks) - was_alive
    return BulkOutcome(
        was_alive, unchanged, _summary([(was_alive, "terminating"), (unchanged, "not running")])
    )


def restart_schedules(queryset: QuerySet[CleanupSchedule]) -> BulkOutcome:
    """Terminate and start afresh every selected schedule (the count going on)."""
    fine, refused = _split_refused(list(queryset.all()))
    overdue = {
        s.pk: s for s in _overdue(CleanupSchedule.objects.filter(pk__in=[s.pk for s in fine]))
    }
    pks = [s.pk for s in fine]
    restarted = CleanupSchedule.objects.filter(pk__in=pks).update(
        desired_state=RUNNING, next_run_at=timezone.now(), generation=F("generation") + 1
    )
    _interrupt_waiting_runs(pks, ENDED_BETWEEN_ATTEMPTS)

    def restart(schedule: CleanupSchedule) -> None:
        if schedule.pk in overdue:
            record_overdue_slots(overdue[schedule.pk])
        _restart_orchestration(schedule)

    _in_background(pks, restart, RUNNING, True)
    return BulkOutcome(restarted, 0, _summary([(restarted, "restarting")]), len(refused))


def run_schedules_now(queryset: QuerySet[CleanupSchedule], user: str = "") -> BulkOutcome:
    """One extra run of every running schedule, recorded as manual by ``user``."""
    pks = list(queryset.filter(desired_state=RUNNING).values_list("pk", flat=True))

    def ask(schedule: CleanupSchedule) -> None:
        with engine_call():
            get_client().raise_orchestration_event(
                schedule.instance_id, RUN_NOW_EVENT, data={"by": user}
            )

    _in_background(pks, ask, RUNNING, False)
    unchanged = queryset.count() - len(pks)
    message = _summary([(len(pks), "running once now"), (unchanged, "not running")])
    return BulkOutcome(len(pks), unchanged, message)


PAUSED_BETWEEN_ATTEMPTS = (
    "Paused while it waited for a retry or its next part; it goes on when resumed."
)
ENDED_BETWEEN_ATTEMPTS = (
    "Its orchestration was ended (restart or terminate) while it waited for a retry or its "
    "next part."
)


def _interrupt_waiting_runs(pks: list[int], why: str = PAUSED_BETWEEN_ATTEMPTS) -> None:
    """A run between two attempts (or two parts) is not running: its orchestration is paused,
    and its record is reused when it goes on; or ended, and nothing will come for it."""
    CleanupRun.objects.running().filter(schedule__in=pks, finished_at__isnull=False).update(
        status=CleanupRun.Status.INTERRUPTED, error=why
    )


def _suspend(schedule: CleanupSchedule) -> None:
    with engine_call():
        client, state = _engine_state(schedule)
        if state is not None and state.runtime_status in LIVE_STATUSES:
            client.suspend_orchestration(schedule.instance_id, reason="paused by operator")


def _resume_or_start(schedule: CleanupSchedule) -> None:
    with engine_call():
        client, state = _engine_state(schedule)
        if state is not None and state.runtime_status in LIVE_STATUSES:
            # Even if it does not look suspended yet: a pause sent a moment ago may still be on
            # its way, and would take effect after this resume otherwise.
            client.resume_orchestration(schedule.instance_id, reason="resumed by operator")
        else:
            # Paused by its failure streak (the loop ended) or lost: start it again.
            start_orchestration(schedule)


def _terminate(schedule: CleanupSchedule) -> bool:
    """End the schedule's orchestration if it is live; whether it was."""
    with engine_call():
        client, state = _engine_state(schedule)
        if state is None or state.runtime_status not in LIVE_STATUSES:
            return False
        client.terminate_orchestration(
            schedule.instance_id, output="terminated by operator", recursive=False
        )
    return True


def _restart_orchestration(schedule: CleanupSchedule) -> ControlOutcome:
    """End the live orchestration (unless a reconciler pass already started this very
    generation) and start the schedule's current one."""
    with engine_call():
        client, state = _engine_state(schedule)
        live = state is not None and state.runtime_status in LIVE_STATUSES
        if live and live_generation(client, schedule) != schedule.generation:
            end_orchestration(client, schedule, "restarted by operator")
        return start_orchestration(schedule, trigger="restart")
