from django.urls import path

from cleanups import ops_views, views

app_name = "cleanups"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("status.json", views.dashboard_status, name="dashboard_status"),
    path("schedules/<int:pk>/", views.schedule_detail, name="schedule_detail"),
    path("schedules/<int:pk>/runs/", views.schedule_runs, name="schedule_runs"),
    path("runs/", views.all_runs, name="runs"),
    path("runs/<int:pk>/", views.run_detail, name="run_detail"),
    path("runs/<int:pk>/decide/", views.decide, name="run_decide"),
    path(
        "schedules/<int:pk>/deletions.csv",
        views.deletion_report,
        {"fmt": "csv"},
        name="deletion_report_csv",
    ),
    path(
        "schedules/<int:pk>/deletions.json",
        views.deletion_report,
        {"fmt": "json"},
        name="deletion_report_json",
    ),
    path("schedules/preview/", views.cadence_preview, name="cadence_preview"),
    # Operations (README, "Operating it"): under the prefix the app is mounted at.
    path("healthz", ops_views.healthz_view, name="healthz"),
    path("metrics", ops_views.metrics_view, name="metrics"),
]
