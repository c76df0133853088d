"""The app's own settings: each has a default inside the app, so a host project sets only what it
changes; the demo site's environment defaults are the same values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.conf import global_settings

import cleanups
from cleanups import conf
from tests.conftest import manage

APP = Path(cleanups.__file__).parent


def test_a_project_without_the_apps_settings_gets_the_apps_defaults(settings):
    for name in conf.DEFAULTS:
        if hasattr(settings, name):
            delattr(settings, name)
    for name, default in conf.DEFAULTS.items():
        assert getattr(conf.settings, name) == default, name


def test_a_projects_own_value_wins_and_is_read_at_every_access(settings):
    settings.RECONCILE_INTERVAL = 0.25
    assert conf.settings.RECONCILE_INTERVAL == 0.25
    settings.RECONCILE_INTERVAL = 7
    assert conf.settings.RECONCILE_INTERVAL == 7


def test_a_setting_neither_django_nor_the_app_defines_is_an_attribute_error(settings):
    with pytest.raises(AttributeError):
        conf.settings.NO_SUCH_CLEANUPS_SETTING  # noqa: B018


def test_every_setting_the_app_reads_is_djangos_or_has_a_default_in_the_app():
    read: set[str] = set()
    for source in APP.rglob("*.py"):
        if "migrations" in source.parts:
            continue
        read |= set(re.findall(r"\bsettings\.([A-Z][A-Z0-9_]+)", source.read_text()))
        read |= set(re.findall(r"getattr\(settings, \"([A-Z][A-Z0-9_]+)\"", source.read_text()))
    ours = read - set(dir(global_settings)) - {"BASE_DIR"}  # BASE_DIR: read with a fallback
    assert ours, "the scan found none of the app's settings"
    assert ours <= set(conf.DEFAULTS), f"no default in cleanups.conf: {ours - set(conf.DEFAULTS)}"


def test_the_demo_sites_defaults_are_the_apps_defaults():
    # cleanupsite fills them from the environment; with none of them set they are the app's.
    script = (
        "import json; from django.conf import settings; from cleanups import conf; "
        "print(json.dumps({n: getattr(settings, n) for n in conf.DEFAULTS}))"
    )
    result = manage("shell", "-c", script, unset=set(conf.DEFAULTS), DEBUG="true")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == conf.DEFAULTS


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        ("RECONCILE_INTERVAL", "abc", "cleanups: RECONCILE_INTERVAL='abc' is not a number."),
        (
            "CLEANUP_MAX_RUN_SECONDS",
            "1.5",
            "cleanups: CLEANUP_MAX_RUN_SECONDS='1.5' is not a whole number.",
        ),
        (
            "CLEANUP_DISPATCH_LEAD_SECONDS",
            "soon",
            "cleanups: CLEANUP_DISPATCH_LEAD_SECONDS='soon' is not a number.",
        ),
    ],
)
def test_a_value_the_demo_site_cannot_parse_stops_it_with_one_line(variable, value, line):
    result = manage("check", DEBUG="true", **{variable: value})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [line]


def test_a_number_out_of_range_is_a_system_check_error_not_a_traceback():
    result = manage("check", DEBUG="true", RECONCILE_INTERVAL="-1", WORKER_STOP_SECONDS="0")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert (
        "(cleanups.E003) RECONCILE_INTERVAL is -1.0: it must be a number of seconds more than 0."
        in result.stderr
    )
    assert "WORKER_STOP_SECONDS" not in result.stderr  # 0 is allowed there


def test_a_host_projects_hand_written_settings_are_checked(settings):
    from cleanups.checks import check_setting_values

    assert check_setting_values() == []
    settings.ENGINE_CALL_TIMEOUT = "5"
    settings.CLEANUP_ALLOWED_DIRS = "/var/tmp"  # a string, not a list: would allow "/", "v"...
    settings.MISSED_RUN_GRACE_SECONDS = True
    messages = [error.msg for error in check_setting_values()]
    assert messages == [
        "ENGINE_CALL_TIMEOUT is '5': it must be a number of seconds more than 0.",
        "MISSED_RUN_GRACE_SECONDS is True: it must be a number of seconds at least 0.",
        "CLEANUP_ALLOWED_DIRS is '/var/tmp': it must be a list of strings.",
    ]
