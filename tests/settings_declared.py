"""The test settings, with schedules declared in code: ``CLEANUP_SCHEDULES`` from the JSON in the
environment variable of that name, and an app whose ``cleanup_schedules`` module declares those
in ``DECLARED_APP_SCHEDULES`` (for syncschedules and runworker --sync in child processes)."""

import json
import os

from cleanupsite.settings_test import *  # noqa: F403
from cleanupsite.settings_test import INSTALLED_APPS

CLEANUP_SCHEDULES = json.loads(os.environ.get("CLEANUP_SCHEDULES", "{}"))

INSTALLED_APPS = [*INSTALLED_APPS, "tests.declaredapp"]
