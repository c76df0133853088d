"""The run records' admin: read-only, with the decisions on held runs as actions."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse

from cleanups.admin.helpers import status_badge
from cleanups.control import APPROVE_PERMISSION, DecisionRefused, approve_run, reject_run
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
    actions = ["approve_held_runs", "reject_held_runs"]
    # The review holds a sample of the rows: shown on the run page, to approvers who may view
    # them, never in the admin's field list.
    exclude = ["review"]

    @admin.display(description="Status", ordering="status")
    def status_badge(self, run: CleanupRun) -> str:
        return status_badge(run.status, run.get_status_display())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(APPROVE_PERMISSION))

    def view_on_site(self, run: CleanupRun) -> str:
        return reverse("cleanups:run_detail", args=[run.pk])

    def _decide(self, request: HttpRequest, runs: QuerySet[CleanupRun], decide: object) -> None:
        for run in runs.select_related("schedule").order_by("pk"):
            try:
                self.message_user(request, decide(run, request.user), messages.SUCCESS)  # type: ignore[operator]
            except DecisionRefused as refused:
                self.message_user(request, str(refused), messages.ERROR)

    @admin.action(
        description="Approve the selected held runs (each runs now, deleting at most what it showed)",
        permissions=["approve"],
    )
    def approve_held_runs(self, request: HttpRequest, runs: QuerySet[CleanupRun]) -> None:
        self._decide(request, runs, approve_run)

    @admin.action(
        description="Reject the selected held runs (and pause their schedules)",
        permissions=["approve"],
    )
    def reject_held_runs(self, request: HttpRequest, runs: QuerySet[CleanupRun]) -> None:
        self._decide(request, runs, reject_run)
