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
    path("schedules/preview/", views.cadence_preview, name="cadence_preview"),
    # Operations (README, "Operating it"): under the prefix the app is mounted at.
    path("healthz", ops_views.healthz_view, name="healthz"),
    path("metrics", ops_views.metrics_view, name="metrics"),
]
