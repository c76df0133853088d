"""What the admin's pages share: live engine status on the schedule list, filters, badges and
the message level of each control outcome."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from cleanups.control import Outcome
from cleanups.instances import EngineUnavailable, runtime_states, runtime_status_label
from cleanups.models import CleanupSchedule

ENGINE_UNREACHABLE = "engine unreachable"

admin.site.site_header = "cleanups"
admin.site.site_title = "cleanups"
admin.site.index_title = "Scheduled cleanups"
# The schedule list is wide (live status, last and next run): give it the whole page.
admin.site.enable_nav_sidebar = False

MESSAGE_LEVELS = {
    Outcome.STARTED: messages.SUCCESS,
    Outcome.TERMINATED: messages.SUCCESS,
    Outcome.ALREADY_RUNNING: messages.INFO,
    Outcome.NOT_RUNNING: messages.INFO,
    Outcome.REFUSED: messages.ERROR,
    Outcome.ENGINE_UNREACHABLE: messages.WARNING,
    Outcome.PAUSED: messages.SUCCESS,
    Outcome.RESUMED: messages.SUCCESS,
    Outcome.RUN_REQUESTED: messages.SUCCESS,
}


# Up to this many selected schedules, each gets its own outcome message (one engine call each,


class ScheduleChangeList(ChangeList):
    """Asks the engine for the state of the schedules on the page, by id (never the fleet's)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        if request.method != "GET":
            # An action's POST builds the changelist only to find the selection; the page it
            # redirects to asks the engine.
            return
        try:
            states = runtime_states([s.instance_id for s in self.result_list])
        except EngineUnavailable:
            messages.warning(
                request,
                "The Durable Task engine is unreachable: runtime status is unknown. "
                "Is `python manage.py runworker` running?",
            )
            states = None
        for schedule in self.result_list:
            if states is None:
                label = ENGINE_UNREACHABLE
            else:
                label = runtime_status_label(states.get(schedule.instance_id))
            if schedule.recovering_since:
                label = f"recovering ({schedule.last_error})"
            schedule.runtime_status_label = label


def may_view_runs(request: HttpRequest) -> bool:
    return request.user.has_perm("cleanups.view_cleanuprun")


def swap(fields: Any, replacements: dict[str, str | None]) -> list[str]:
    """The field names with some replaced by others, or left out where the replacement is None."""
    swapped = (replacements.get(name, name) for name in fields)
    return [name for name in swapped if name is not None]


class ManagedInCodeFilter(admin.SimpleListFilter):
    title = "managed in code"
    parameter_name = "managed_in_code"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes (read-only definition)"), ("no", "No (managed here)")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[CleanupSchedule]
    ) -> QuerySet[CleanupSchedule]:
        if self.value() == "yes":
            return queryset.exclude(managed_by="")
        if self.value() == "no":
            return queryset.filter(managed_by="")
        return queryset


def is_managed_in_code(schedule: Any) -> bool:
    return bool(schedule is not None and getattr(schedule, "managed_by", ""))


def status_badge(status: str, label: str) -> SafeString:
    return SafeString(
        render_to_string("cleanups/_status.html", {"status": status, "label": label}).strip()
    )
