"""The schedules' admin: the definition form, live state, and the control actions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import LogEntry
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from cleanups import control
from cleanups.admin.helpers import (
    MESSAGE_LEVELS,
    ManagedInCodeFilter,
    ScheduleChangeList,
    is_managed_in_code,
    may_view_runs,
    status_badge,
    swap,
)
from cleanups.cadence import preview_times, window_of
from cleanups.declared import DEFINITION_FIELDS
from cleanups.formatting import human_duration
from cleanups.forms import CleanupScheduleForm
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import all_tasks


@admin.register(CleanupSchedule)
class CleanupScheduleAdmin(admin.ModelAdmin):
    form = CleanupScheduleForm
    list_display = [
        "name",
        "task_label",
        "every",
        "desired_state",
        "runtime_status",
        "iteration",
        "last_run",
        "next_run",
        "run_history",
        "managed_in_code",
    ]
    list_filter = ["desired_state", "task", ManagedInCodeFilter]
    search_fields = ["name"]
    actions = [
        "start_schedules",
        "pause_schedules",
        "resume_schedules",
        "run_now",
        "restart_schedules",
        "terminate_schedules",
    ]
    readonly_fields = [
        "upcoming_runs",
        "desired_state",
        "status_reason",
        "last_error",
        "instance_id",
        "current_iteration",
        "start_iteration",
        "consecutive_failures",
        "next_run_at",
        "changed_by",
        "created_at",
        "updated_at",
        "run_history",
        "overview",
        "recent_changes",
    ]
    fieldsets = [
        (None, {"fields": ["name", "task", "params", "dry_run"]}),
        (
            "Cadence",
            {
                "fields": [
                    "cadence",
                    "interval",
                    "cron",
                    "timezone",
                    "start_at",
                    "end_at",
                    "window_start",
                    "window_end",
                    "upcoming_runs",
                ]
            },
        ),
        (
            "Limits, missed runs and failures",
            {
                "fields": [
                    "max_iterations",
                    "missed_runs",
                    "max_retries",
                    "max_run_seconds",
                    "pause_after_failures",
                    "notify_email",
                    "alert_webhooks",
                ]
            },
        ),
        (
            "Safety: how much a run may delete",
            {"fields": ["max_rows_per_run", "max_table_fraction", "archive"]},
        ),
        (
            "Kind to the database",
            {"fields": ["max_rows_per_second", "vacuum"]},
        ),
        (
            "State",
            {
                "fields": [
                    "desired_state",
                    "status_reason",
                    "last_error",
                    "instance_id",
                    "current_iteration",
                    "start_iteration",
                    "consecutive_failures",
                    "next_run_at",
                    "run_history",
                    "recent_changes",
                    "changed_by",
                    "created_at",
                    "updated_at",
                ]
            },
        ),
    ]

    class Media:
        css = {"all": ["cleanups/cleanups.css"]}
        js = ["cleanups/schedule_form.js"]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        # A schedule being added has no state yet: show only what the operator fills in.
        if obj is None:
            return [fieldset for fieldset in self.fieldsets if fieldset[0] != "State"]
        fieldsets = self.fieldsets
        if not may_view_runs(request):
            # Runs' error text and the links to run pages are for those who may view runs.
            hidden = {"last_error": None, "run_history": "overview"}
            fieldsets = [
                (title, {**options, "fields": swap(options["fields"], hidden)})
                for title, options in fieldsets
            ]
        if is_managed_in_code(obj):
            notice = (
                None,
                {
                    "fields": ["managed_in_code_notice"],
                    "classes": ["managed-in-code"],
                },
            )
            fieldsets = [notice, *fieldsets]
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if is_managed_in_code(obj):
            # Its definition is the code's: the next syncschedules would undo an edit here.
            return [*DEFINITION_FIELDS, "managed_in_code_notice", *self.readonly_fields]
        return self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A schedule declared in code is view-only here (its actions, which ask for the change
        # permission without a schedule, stay available on the list).
        if is_managed_in_code(obj):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The next syncschedules would create it again, without its history: remove it from
        # the code instead (it is then stopped and handed back here).
        if is_managed_in_code(obj):
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="Managed in code")
    def managed_in_code_notice(self, schedule: CleanupSchedule) -> str:
        return format_html(
            "<strong>{}</strong> (declared state: {})<br>Its definition is read-only here: "
            "change it in the code and run <code>manage.py syncschedules</code>. Pause, resume, "
            "run now, restart and terminate work as for any schedule; an operator's pause or "
            "start stands until the code declares another <code>state</code>.",
            schedule.managed_by,
            schedule.declared_state or "–",
        )

    @admin.display(description="Managed in code", ordering="managed_by")
    def managed_in_code(self, schedule: CleanupSchedule) -> str:
        return schedule.managed_by or "–"

    def get_list_display(self, request: HttpRequest) -> Any:
        if may_view_runs(request):
            return self.list_display
        return swap(self.list_display, {"run_history": "overview"})

    @admin.display(description="Next five runs")
    def upcoming_runs(self, schedule: CleanupSchedule) -> str:
        times: list[str] = []
        if schedule.pk is not None:
            try:
                times = [t.isoformat(timespec="seconds") for t in preview_times(schedule)]
            except ValueError:
                times = []
        window = window_of(schedule)
        if times and window is not None:
            times.append(window.describe(schedule.timezone))
        return format_html(
            '<div id="upcoming-runs" data-url="{}" aria-live="polite">{}</div>',
            reverse("cleanups:cadence_preview"),
            format_html_join("", "<div>{}</div>", ((t,) for t in times)) or "–",
        )

    @admin.display(description="Recent changes")
    def recent_changes(self, schedule: CleanupSchedule) -> str:
        if schedule.pk is None:
            return "–"
        entries = LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(CleanupSchedule),
            object_id=str(schedule.pk),
        ).select_related("user")[:10]
        if not entries:
            return "–"
        return format_html_join(
            "",
            "<div>{} · {} · {}</div>",
            (
                (
                    entry.action_time.isoformat(timespec="seconds"),
                    entry.user.get_username(),
                    entry.get_change_message() or entry.get_action_flag_display(),
                )
                for entry in entries
            ),
        )

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        form = super().get_form(request, obj, change=change, **kwargs)
        form.editor = request.user  # a class made for this request: validated as this person
        if "task" in form.base_fields:
            form.base_fields["task"].help_text = format_html(
                "Which cleanup to run.{}",
                format_html_join(
                    "", "<br><code>{}</code>: {}", ((t.name, t.description) for t in all_tasks())
                ),
            )
        return form

    def get_queryset(self, request: HttpRequest) -> QuerySet[CleanupSchedule]:
        return super().get_queryset(request).with_last_run()

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ScheduleChangeList

    @admin.display(description="Runtime status")
    def runtime_status(self, schedule: CleanupSchedule) -> str:
        return getattr(schedule, "runtime_status_label", "")

    @admin.display(description="Task", ordering="task")
    def task_label(self, schedule: CleanupSchedule) -> str:
        if schedule.dry_run:
            return format_html("{} <em>(dry run)</em>", schedule.task)
        return schedule.task

    @admin.display(description="Every", ordering="interval")
    def every(self, schedule: CleanupSchedule) -> str:
        return human_duration(schedule.interval)

    @admin.display(description="Iteration", ordering="current_iteration")
    def iteration(self, schedule: CleanupSchedule) -> str:
        if schedule.max_iterations:
            done = max(0, schedule.current_iteration - schedule.start_iteration + 1)
            return f"{schedule.current_iteration} ({done} of {schedule.max_iterations})"
        return str(schedule.current_iteration)

    @admin.display(description="Last run", ordering="last_run_started_at")
    def last_run(self, schedule: CleanupSchedule) -> str:
        status = getattr(schedule, "last_run_status", None)
        if not status:
            return "–"
        started = schedule.last_run_started_at  # type: ignore[attr-defined]
        return format_html(
            '{}<br><span title="{}">{}</span>',
            status_badge(status, CleanupRun.Status(status).label),
            started.isoformat(timespec="seconds"),
            naturaltime(started),
        )

    @admin.display(description="Next run", ordering="next_run_at")
    def next_run(self, schedule: CleanupSchedule) -> str:
        if schedule.desired_state == CleanupSchedule.DesiredState.PAUSED:
            return "paused"
        upcoming = schedule.upcoming_run_at
        if upcoming is None:
            return "–"
        return format_html(
            '<span title="{}">{}</span>',
            upcoming.isoformat(timespec="seconds"),
            naturaltime(upcoming),
        )

    @admin.display(description="Overview")
    def overview(self, schedule: CleanupSchedule) -> str:
        if schedule.pk is None:
            return "–"
        url = reverse("cleanups:schedule_detail", args=[schedule.pk])
        return format_html('<a href="{}">Overview</a>', url)

    @admin.display(description="Run history")
    def run_history(self, schedule: CleanupSchedule) -> str:
        if schedule.pk is None:
            return "–"
        return format_html(
            '<a href="{}">Overview</a> · <a href="{}">Run history</a>',
            reverse("cleanups:schedule_detail", args=[schedule.pk]),
            schedule.get_runs_url(),
        )

    def _act(self, request: HttpRequest, queryset: QuerySet[CleanupSchedule], name: str) -> None:
        """A few schedules: each one's outcome. Many (a page, or "select all"): one statement,
        one message, and the list shows each schedule as it comes up."""
        action = control.actions(request.user.get_username())[name]
        done = control.act(action, queryset)
        for outcome in done.outcomes:
            self.message_user(request, outcome.message, level=MESSAGE_LEVELS[outcome.outcome])
        if done.bulk is not None:
            level = messages.WARNING if done.bulk.refused else messages.SUCCESS
            self.message_user(request, done.bulk.message, level=level)

    @admin.action(description="Start selected schedules", permissions=["change"])
    def start_schedules(self, request: HttpRequest, queryset: QuerySet[CleanupSchedule]) -> None:
        self._act(request, queryset, "start")

    @admin.action(description="Pause selected schedules", permissions=["change"])
    def pause_schedules(self, request: HttpRequest, queryset: QuerySet[CleanupSchedule]) -> None:
        self._act(request, queryset, "pause")

    @admin.action(description="Resume selected schedules", permissions=["change"])
    def resume_schedules(self, request: HttpRequest, queryset: QuerySet[CleanupSchedule]) -> None:
        self._act(request, queryset, "resume")

    @admin.action(description="Run selected schedules now (once, extra)", permissions=["change"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[CleanupSchedule]) -> None:
        self._act(request, queryset, "run-now")

    @admin.action(
        description="Restart selected schedules (fresh orchestration)", permissions=["change"]
    )
    def restart_schedules(self, request: HttpRequest, queryset: QuerySet[CleanupSchedule]) -> None:
        self._act(request, queryset, "restart")

    @admin.action(description="Terminate selected schedules", permissions=["change"])
    def terminate_schedules(
        self, request: HttpRequest, queryset: QuerySet[CleanupSchedule]
    ) -> None:
        self._act(request, queryset, "terminate")
