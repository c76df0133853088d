"""The admin: schedules (their definition, live state and control actions) and read-only runs."""

from cleanups.admin import holds, runs, schedules  # register the ModelAdmins

__all__ = ["holds", "runs", "schedules"]
