"""Schedule control: write the desired state first, then ask the engine. No request needed.

An engine that cannot be reached is an outcome, not an exception: the desired state is
already recorded and runworker's reconciler finishes the job once the engine is back.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from django.utils import timezone
from durabletask import client as dt_client
from durabletask.internal import orchestrator_service_pb2 as pb

from cleanups.durable.connection import get_client
from cleanups.models import INSTANCE_ID_PREFIX, CleanupSchedule

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
_UNREACHABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


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
    NOT_RUNNING = "not running"
    ENGINE_UNREACHABLE = "engine unreachable"


@dataclass(frozen=True)
class ControlOutcome:
    schedule: CleanupSchedule
    outcome: Outcome
    message: str


def start_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Mark the schedule running and start its orchestration unless one is already live."""
    _set_desired_state(schedule, CleanupSchedule.DesiredState.RUNNING)
    try:
        return start_orchestration(schedule, fresh_start=True)
    except EngineUnavailable:
        return ControlOutcome(
            schedule,
            Outcome.ENGINE_UNREACHABLE,
            f"“{schedule}”: engine unreachable. Recorded as running; the worker starts it "
            "when the engine is back.",
        )


def terminate_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Mark the schedule stopped and terminate its orchestration if it is live."""
    _set_desired_state(schedule, CleanupSchedule.DesiredState.STOPPED)
    try:
        with engine_call():
            client = get_client()
            state = client.get_orchestration_state(schedule.instance_id, fetch_payloads=False)
            if state is None or state.runtime_status not in LIVE_STATUSES:
                return ControlOutcome(
                    schedule, Outcome.NOT_RUNNING, f"“{schedule}” was not running."
                )
            client.terminate_orchestration(
                schedule.instance_id, output="terminated by operator", recursive=False
            )
    except EngineUnavailable:
        return ControlOutcome(
            schedule,
            Outcome.ENGINE_UNREACHABLE,
            f"“{schedule}”: engine unreachable. Recorded as stopped; the worker terminates it "
            "when the engine is back.",
        )
    return ControlOutcome(schedule, Outcome.TERMINATED, f"“{schedule}” terminated.")


def start_orchestration(schedule: CleanupSchedule, *, fresh_start: bool) -> ControlOutcome:
    """Start the schedule's orchestration, continuing its iteration count.

    A fresh start (the operator's) runs now and counts `max_iterations` from here; a restart
    by the reconciler keeps the start's count and waits what is left until the next run.
    Raises EngineUnavailable.
    """
    with engine_call():
        client = get_client()
        state = client.get_orchestration_state(schedule.instance_id, fetch_payloads=False)
        if state is not None and state.runtime_status in LIVE_STATUSES:
            return ControlOutcome(
                schedule,
                Outcome.ALREADY_RUNNING,
                f"“{schedule}” is already running; nothing new started.",
            )
        iteration = schedule.next_iteration()
        orchestration_input: dict[str, object] = {
            "schedule_id": schedule.pk,
            "iteration": iteration,
        }
        now = timezone.now()
        if fresh_start:
            schedule.start_iteration = iteration
            schedule.next_run_at = now
            CleanupSchedule.objects.filter(pk=schedule.pk).update(
                start_iteration=iteration, next_run_at=now
            )
        elif schedule.next_run_at and schedule.next_run_at > now:
            orchestration_input["run_at"] = schedule.next_run_at.isoformat()
        try:
            client.schedule_new_orchestration(
                ORCHESTRATION_NAME,
                input=orchestration_input,
                instance_id=schedule.instance_id,
                reuse_id_policy=_REPLACE_FINISHED,
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                return ControlOutcome(
                    schedule,
                    Outcome.ALREADY_RUNNING,
                    f"“{schedule}” is already running; nothing new started.",
                )
            raise
    return ControlOutcome(
        schedule, Outcome.STARTED, f"“{schedule}” started at iteration {iteration}."
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
