"""A terminated schedule says an operator ended it; one that had already stopped keeps its own
reason (a terminate of it changes nothing)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cleanups import control
from cleanups.models import CleanupSchedule

STOPPED = CleanupSchedule.DesiredState.STOPPED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])
def test_a_paused_schedule_terminated_says_so_and_a_completed_one_keeps_its_reason(
    bulk, worker, make_schedule
):
    paused = make_schedule(name="paused", interval=timedelta(minutes=5))
    assert control.start_schedule(paused).outcome is control.Outcome.STARTED
    assert control.pause_schedule(paused).outcome is control.Outcome.PAUSED
    done = make_schedule(
        name="done", desired_state=STOPPED, status_reason="Completed after 3 iterations."
    )

    if bulk:
        control.terminate_schedules(CleanupSchedule.objects.filter(pk__in=[paused.pk, done.pk]))
        assert control.wait_for_bulk_engine_calls(timeout=30)
    else:
        assert control.terminate_schedule(paused).outcome is control.Outcome.TERMINATED
        assert control.terminate_schedule(done).outcome is control.Outcome.NOT_RUNNING

    paused.refresh_from_db()
    done.refresh_from_db()
    assert (paused.desired_state, paused.status_reason) == (STOPPED, "Terminated by an operator.")
    assert (done.desired_state, done.status_reason) == (STOPPED, "Completed after 3 iterations.")
