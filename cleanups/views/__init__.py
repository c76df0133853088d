"""The app's pages: run history, a schedule's page, the dashboard. Staff with the models' view
permissions only, a fixed number of queries whatever the number of runs."""

from cleanups.views.dashboard import dashboard, dashboard_status
from cleanups.views.runs import all_runs, run_detail, schedule_runs
from cleanups.views.safety import decide, deletion_report
from cleanups.views.schedules import cadence_preview, schedule_detail

__all__ = [
    "all_runs",
    "cadence_preview",
    "dashboard",
    "dashboard_status",
    "decide",
    "deletion_report",
    "run_detail",
    "schedule_detail",
    "schedule_runs",
]
