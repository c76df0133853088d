"""What one run costs the database: a fixed, small number of statements (a saturated worker's
speed is mostly this)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs.execute import execute_iteration

# The schedule, this schedule's other runs, the record (INSERT with the iteration, one
# commit), its outcome, the schedule again (edited meanwhile?) and its next run.
STATEMENTS_PER_RUN = 9


@pytest.mark.django_db(transaction=True)
def test_a_scheduled_run_on_time_costs_a_fixed_few_statements(
    make_schedule: Any, django_assert_max_num_queries: Any
) -> None:
    schedule = make_schedule(interval=timedelta(seconds=30), max_iterations=3)
    now = timezone.now()
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        generation=1,
        start_iteration=1,
        anchor_at=now,
        next_run_at=now,
    )
    execute_iteration(schedule.pk, 1, planned_at=now.isoformat(), generation=1)
    with django_assert_max_num_queries(STATEMENTS_PER_RUN):
        result = execute_iteration(
            schedule.pk, 2, planned_at=timezone.now().isoformat(), generation=1
        )
    assert result["continue"] and result["next_iteration"] == 3
    run = CleanupRun.objects.get(schedule=schedule, iteration=2)
    assert run.status == CleanupRun.Status.SUCCEEDED
    assert CleanupSchedule.objects.get(pk=schedule.pk).current_iteration == 2
