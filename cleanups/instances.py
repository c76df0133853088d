"""The engine adapter: every call the app makes to a Durable Task engine, in one place.

Each function talks about a schedule's orchestration instance (or the engine as a whole) and
turns "cannot reach the engine" into EngineUnavailable; what the calls mean for an operator
(outcomes, messages) is the schedule control's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import grpc
from durabletask import client as dt_client
from durabletask.internal import orchestrator_service_pb2 as pb

from cleanups.conf import settings
from cleanups.contract import INSTANCE_ID_PREFIX, ORCHESTRATION_NAME, RUN_NOW_EVENT
from cleanups.engine.connection import get_client
from cleanups.models import CleanupSchedule
from cleanups.runs.records import dispatch_lead_seconds

Status = dt_client.OrchestrationStatus
State = dt_client.OrchestrationState
LIVE_STATUSES = frozenset(
    {Status.RUNNING, Status.PENDING, Status.SUSPENDED, Status.CONTINUED_AS_NEW}
)
FINISHED_STATUSES = [Status.COMPLETED, Status.FAILED, Status.TERMINATED]
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


def is_live(state: State | None) -> bool:
    return state is not None and state.runtime_status in LIVE_STATUSES


def state_of_instance(instance_id: str) -> State | None:
    """The engine's state of one instance (None: no such instance). Raises EngineUnavailable;
    any other gRPC error (an engine that refuses the call) as it is."""
    with engine_call():
        return get_client().get_orchestration_state(instance_id, fetch_payloads=False)


def state_of(schedule: CleanupSchedule) -> State | None:
    """The engine's state of the schedule's orchestration (None: no instance)."""
    return state_of_instance(schedule.instance_id)


def start_orchestration(
    schedule: CleanupSchedule, *, trigger: str = "scheduled", known_not_live: bool = False
) -> tuple[bool, int]:
    """Start the schedule's orchestration as the database describes it, its count going on:
    (whether the schedule's own generation is live now, the iteration it starts at).

    The input comes from the schedule's row alone (its generation, next iteration and planned
    next run), so an operator's call and a reconciler pass build the same start, and whichever
    reaches the engine second finds it live with its own generation: True for both. A live
    orchestration of another generation is False. ``known_not_live``: the caller has just asked
    the engine. Raises EngineUnavailable.
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
    with engine_call():
        client = get_client()
        state = (
            None
            if known_not_live
            else client.get_orchestration_state(schedule.instance_id, fetch_payloads=False)
        )
        if not is_live(state):
            try:
                client.schedule_new_orchestration(
                    ORCHESTRATION_NAME,
                    input=orchestration_input,
                    instance_id=schedule.instance_id,
                    reuse_id_policy=_REPLACE_FINISHED,
                )
                return True, iteration
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                    raise
        return live_generation(schedule) == schedule.generation, iteration


def live_generation(schedule: CleanupSchedule) -> Any:
    """The generation a live orchestration of the schedule was started with (None: unknown)."""
    with engine_call():
        state = get_client().get_orchestration_state(schedule.instance_id, fetch_payloads=True)
    if not is_live(state):
        return None
    assert state is not None
    try:
        return json.loads(state.serialized_input or "{}").get("generation")
    except (ValueError, AttributeError):
        return None


def end_orchestration(schedule: CleanupSchedule, why: str, timeout: int = 30) -> None:
    """Terminate the schedule's orchestration and wait until the engine has ended it, so a new
    one can take its instance id. Raises TimeoutError if it does not end in ``timeout`` s."""
    with engine_call():
        client = get_client()
        client.terminate_orchestration(schedule.instance_id, output=why, recursive=False)
        client.wait_for_orchestration_completion(
            schedule.instance_id, fetch_payloads=False, timeout=timeout
        )


def terminate_instance(instance_id: str, why: str) -> None:
    """Terminate an instance, live or not, without waiting."""
    with engine_call():
        get_client().terminate_orchestration(instance_id, output=why, recursive=False)


def terminate_if_live(schedule: CleanupSchedule, why: str = "terminated by operator") -> bool:
    """End the schedule's orchestration if it is live; whether it was."""
    if not is_live(state_of(schedule)):
        return False
    terminate_instance(schedule.instance_id, why)
    return True


def suspend(schedule: CleanupSchedule, reason: str) -> None:
    with engine_call():
        get_client().suspend_orchestration(schedule.instance_id, reason=reason)


def resume(schedule: CleanupSchedule, reason: str) -> None:
    with engine_call():
        get_client().resume_orchestration(schedule.instance_id, reason=reason)


def suspend_if_live(schedule: CleanupSchedule, reason: str = "paused by operator") -> None:
    if is_live(state_of(schedule)):
        suspend(schedule, reason)


def resume_or_start(schedule: CleanupSchedule, reason: str = "resumed by operator") -> None:
    if is_live(state_of(schedule)):
        # Even if it does not look suspended yet: a pause sent a moment ago may still be on
        # its way, and would take effect after this resume otherwise.
        resume(schedule, reason)
    else:
        # Paused by its failure streak (the loop ended) or lost: start it again.
        start_orchestration(schedule)


def restart_orchestration(schedule: CleanupSchedule) -> tuple[bool, int]:
    """End the live orchestration (unless a reconciler pass already started this very
    generation) and start the schedule's current one, as start_orchestration."""
    if is_live(state_of(schedule)) and live_generation(schedule) != schedule.generation:
        end_orchestration(schedule, "restarted by operator")
    return start_orchestration(schedule, trigger="restart")


def raise_run_now(schedule: CleanupSchedule, user: str) -> None:
    with engine_call():
        get_client().raise_orchestration_event(
            schedule.instance_id, RUN_NOW_EVENT, data={"by": user}
        )


def fetch_runtime_states(instance_ids: Iterable[str] | None = None) -> dict[str, State]:
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


# The engine calls for the rows on screen (see runtime_states).
_states_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="cleanups-dashboard")


def runtime_states(instance_ids: list[str]) -> dict[str, State | None]:
    """The engine's state of the instances on screen (None: no such instance). Raises
    EngineUnavailable.

    The SDK fetches instances by id one at a time, or all with a prefix at once
    (fetch_runtime_states): for us the prefix is the whole fleet, 10,000 states parsed (190 ms
    on the embedded engine) to show 50. One GetInstance per row on screen is 50 calls of 0.3 ms
    locally. The first is made here, so an unreachable engine costs one call, not 50; the rest
    go to a few threads, so a remote engine costs a few round trips, not 50.
    """
    if not instance_ids:
        return {}
    first, *rest = instance_ids
    states = {first: state_of_instance(first)}
    states.update(zip(rest, _states_pool.map(state_of_instance, rest), strict=True))
    return states


def runtime_status_label(state: State | None) -> str:
    if state is None:
        return "not started"
    return str(state.runtime_status).lower().replace("_", " ")


def count_finished_before(moment: datetime) -> int:
    """How many finished (completed, failed, terminated) instances were created before
    ``moment``, in the whole task hub."""
    query = dt_client.OrchestrationQuery(created_time_to=moment, runtime_status=FINISHED_STATUSES)
    client = get_client(call_timeout=settings.PURGE_CALL_TIMEOUT)
    return len(client.get_all_orchestration_states(query))


def purge_finished_before(moment: datetime) -> int:
    """Purge the finished instances created before ``moment``; how many went."""
    client = get_client(call_timeout=settings.PURGE_CALL_TIMEOUT)
    result = client.purge_orchestrations_by(
        created_time_to=moment, runtime_status=FINISHED_STATUSES
    )
    return result.deleted_instance_count
