"""CleanupSchedule and CleanupRun: defaults, validation, iteration numbering, constraints."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.utils import timezone

from cleanups.models import CleanupRun, CleanupSchedule

pytestmark = pytest.mark.django_db


def test_name_and_interval_make_a_valid_runnable_schedule(admin_user):
    # Its default task deletes sessions: valid as saved by someone who may delete them.
    schedule = CleanupSchedule.objects.create(
        name="x", interval=timedelta(seconds=2), changed_by=admin_user
    )

    schedule.full_clean()
    assert schedule.task == "expired_sessions"
    assert schedule.params == {}  # cleaned by the task's validation: nothing to add
    assert schedule.max_iterations is None
    assert schedule.desired_state == CleanupSchedule.DesiredState.STOPPED
    assert schedule.instance_id == f"cleanup-schedule-{schedule.pk}"
    assert CleanupSchedule.objects.get(pk=schedule.pk).instance_id == schedule.instance_id
    assert schedule.next_iteration() == 1


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"interval": timedelta(milliseconds=500)}, "interval", "at least 1 second"),
        ({"interval": timedelta(0)}, "interval", "at least 1 second"),
        ({"max_iterations": 0}, "max_iterations", "at least 1"),
        ({"task": "no_such_task"}, "task", "no_such_task"),
        ({"task": "sample", "params": {"seconds": -1}}, "params", "between 0 and 3600"),
        ({"task": "sample", "params": {"seconds": "5"}}, "params", "must be a number"),
        ({"task": "sample", "params": {"second": 5}}, "params", "Unknown parameter(s): second"),
        ({"task": "sample", "params": [1, 2]}, "params", "JSON object"),
        ({"params": {"batch_size": 0}}, "params", "batch_size must be between"),
    ],
)
def test_clean_rejects_bad_values_with_field_errors(fields, field, text):
    schedule = CleanupSchedule(**{"name": "bad", "interval": timedelta(seconds=5), **fields})

    with pytest.raises(ValidationError) as caught:
        schedule.full_clean()
    assert field in caught.value.message_dict
    assert any(text in message for message in caught.value.message_dict[field])


def test_a_new_start_continues_after_the_last_recorded_iteration():
    schedule = CleanupSchedule.objects.create(name="x", interval=timedelta(seconds=2))
    now = timezone.now()
    CleanupRun.objects.bulk_create(
        CleanupRun(schedule=schedule, iteration=n, task="sample", started_at=now) for n in (1, 2, 7)
    )
    assert schedule.next_iteration() == 8


def test_one_record_per_iteration_is_enforced_by_the_database():
    schedule = CleanupSchedule.objects.create(name="x", interval=timedelta(seconds=2))
    CleanupRun.objects.create(
        schedule=schedule, iteration=1, task="sample", started_at=timezone.now()
    )

    with pytest.raises(IntegrityError):
        CleanupRun.objects.create(
            schedule=schedule, iteration=1, task="sample", started_at=timezone.now()
        )


def test_max_iterations_counts_the_iterations_of_one_start():
    schedule = CleanupSchedule(name="x", interval=timedelta(seconds=1), max_iterations=3)
    schedule.start_iteration = 11
    assert schedule.iterations_left(11)
    assert schedule.iterations_left(12)
    assert not schedule.iterations_left(13)
    schedule.max_iterations = None
    assert schedule.iterations_left(10_000)
