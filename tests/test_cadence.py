"""Cadence arithmetic (pure functions) and the form's preview of the next runs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse

from cleanups.cadence import Cadence, cron_next

UTC_ = UTC


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC_)


def test_cron_skips_a_time_that_does_not_exist_when_clocks_go_forward():
    # Europe/Berlin, 29 March 2026: 02:00 -> 03:00, so 02:30 does not happen that night.
    rule = Cadence("cron", timedelta(0), cron="30 2 * * *", timezone="Europe/Berlin")
    times = rule.upcoming(utc(2026, 3, 27, 12), 3)
    assert times == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # the DST night: croniter fires at 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_cron_keeps_local_wall_clock_time_across_dst():
    rule = Cadence("cron", timedelta(0), cron="0 9 * * *", timezone="Europe/Berlin")
    before, after = rule.upcoming(utc(2026, 3, 28, 0), 2)
    assert (before.hour, after.hour) == (8, 7)  # 09:00 CET, then 09:00 CEST
    autumn = rule.upcoming(utc(2026, 10, 24, 0), 2)
    assert [t.hour for t in autumn] == [7, 8]  # 09:00 CEST, then 09:00 CET


def test_cron_fires_at_each_occurrence_of_an_hour_that_happens_twice():
    # 25 October 2026: 03:00 CEST -> 02:00 CET, so 02:30 happens twice; croniter (and so
    # this schedule) fires at both, as its documentation says. The README says so too.
    fires = []
    moment = utc(2026, 10, 24, 23)
    while moment < utc(2026, 10, 25, 3):
        moment = cron_next("30 2 * * *", "Europe/Berlin", moment)
        if moment < utc(2026, 10, 25, 3):
            fires.append(moment)
    assert fires == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)]


def test_fixed_rate_stays_on_its_grid():
    rule = Cadence("fixed_rate", timedelta(minutes=10), anchor=utc(2026, 1, 1))
    assert rule.next_after(utc(2026, 1, 1, 0, 25)) == utc(2026, 1, 1, 0, 30)
    assert rule.next_after(utc(2026, 1, 1, 0, 30)) == utc(2026, 1, 1, 0, 40)
    assert rule.next_after(utc(2025, 12, 31)) == utc(2026, 1, 1)
    assert rule.slots_between(utc(2026, 1, 1), utc(2026, 1, 1, 0, 35)) == 3


def test_fixed_delay_counts_from_the_end_of_the_run():
    rule = Cadence("fixed_delay", timedelta(hours=1))
    assert rule.next_after(utc(2026, 1, 1, 1), utc(2026, 1, 1, 1, 30)) == utc(2026, 1, 1, 2, 30)


@pytest.mark.django_db
def test_the_form_previews_the_next_five_runs(admin_client):
    url = reverse("cleanups:cadence_preview")
    response = admin_client.get(
        url, {"cadence": "cron", "cron": "0 3 * * 1", "timezone": "Europe/Berlin"}
    )
    times = response.json()["times"]
    assert len(times) == 5
    assert all(t.endswith(("03:00:00 CET", "03:00:00 CEST")) for t in times)

    bad = admin_client.get(url, {"cadence": "cron", "cron": "61 * * *", "timezone": "UTC"})
    assert "not a valid 5-field cron expression" in bad.json()["error"]
    zone = admin_client.get(
        url, {"cadence": "cron", "cron": "* * * * *", "timezone": "Mars/Olympus"}
    )
    assert "not an IANA time zone" in zone.json()["error"]
    short = admin_client.get(url, {"cadence": "fixed_rate", "interval": "0"})
    assert "at least 1 second" in short.json()["error"]
    grid = admin_client.get(
        url,
        {"cadence": "fixed_rate", "interval": "01:00:00", "start_at": "2030-01-01 00:00:00"},
    ).json()["times"]
    assert grid[:2] == ["2030-01-01 01:00:00 UTC", "2030-01-01 02:00:00 UTC"]
    assert Client().get(url).status_code == 302  # staff only


@pytest.mark.django_db
def test_the_change_page_lists_the_next_runs_and_recent_changes(admin_client, make_schedule):
    schedule = make_schedule(cadence="cron", cron="0 4 * * *", timezone="UTC")
    change = reverse("admin:cleanups_cleanupschedule_change", args=[schedule.pk])
    data = {
        "name": schedule.name,
        "task": "sample",
        "params": '{"seconds": 0}',
        "cadence": "cron",
        "interval": "00:00:01",
        "cron": "15 4 * * *",
        "timezone": "UTC",
        "missed_runs": "skip",
        "max_retries": "0",
        "pause_after_failures": "0",
    }
    assert admin_client.post(change, data).status_code == 302

    html = admin_client.get(change).content.decode()
    assert html.count("04:15:00") == 5  # the next five runs
    # who changed what, from the admin log
    assert re.search(r"· admin · Changed [^<]*Cron[^<]*Missed runs\.", html)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"cadence": "cron"}, "cron", "needs a cron expression"),
        ({"cadence": "cron", "cron": "* * *"}, "cron", "not a valid 5-field"),
        ({"timezone": "Nowhere/Land"}, "timezone", "not an IANA time zone"),
        (
            {"start_at": utc(2030, 1, 2), "end_at": utc(2030, 1, 1)},
            "end_at",
            "must come after the start",
        ),
    ],
)
def test_bad_cadence_values_are_field_errors(fields, field, text):
    from django.core.exceptions import ValidationError

    from cleanups.models import CleanupSchedule

    schedule = CleanupSchedule(name="x", interval=timedelta(seconds=5), task="sample", **fields)
    with pytest.raises(ValidationError) as caught:
        schedule.full_clean()
    assert any(text in m for m in caught.value.message_dict[field])
