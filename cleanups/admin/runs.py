"""The run records' admin: read-only."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse

from cleanups.admin.helpers import status_badge
from cleanups.models import CleanupRun


@admin.register(CleanupRun)
class CleanupRunAdmin(admin.ModelAdmin):
    list_display = [
        "schedule",
        "iteration",
        "status_badge",
        "started_at",
        "duration",
        "items_deleted",
        "dry_run",
    ]
    list_filter = ["status", "dry_run", "schedule"]
    list_select_related = ["schedule"]
    date_hierarchy = "started_at"

    @admin.display(description="Status", ordering="status")
    def status_badge(self, run: CleanupRun) -> str:
        return status_badge(run.status, run.get_status_display())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def view_on_site(self, run: CleanupRun) -> str:
        return reverse("cleanups:run_detail", args=[run.pk])
