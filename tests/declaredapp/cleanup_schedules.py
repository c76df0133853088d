"""Schedules declared the way a project's app would declare them; for the tests, read from the
JSON in the environment variable DECLARED_APP_SCHEDULES."""

import json
import os

SCHEDULES = json.loads(os.environ.get("DECLARED_APP_SCHEDULES", "{}"))
