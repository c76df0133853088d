"""Safety on the pages: a held run's review (its sample only for those who may view the rows),
the approve and reject buttons, and a schedule's deletion report (CSV and JSON)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from django.apps import apps
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.views.decorators.http import require_POST

from cleanups.control import APPROVE_PERMISSION, DecisionRefused, approve_run, reject_run
from cleanups.control.approvals import refusal
from cleanups.formatting import spreadsheet_safe
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.views.access import run_viewer_required


def may_view_rows(user: Any, label: str) -> bool:
    """Whether ``user`` may see rows of the model ``label`` (a sample of a held run)."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return False
    opts = model._meta
    return bool(user.has_perm(f"{opts.app_label}.view_{opts.model_name}"))


def review_context(request: HttpRequest, run: CleanupRun) -> dict[str, Any]:
    review = run.review or {}
    label = review.get("sample_of", "")
    approver = request.user.has_perm(APPROVE_PERMISSION)
    shows_sample = bool(
        label
        and approver
        and ((label == "files" and request.user.is_superuser) or may_view_rows(request.user, label))
    )
    return {
        "review": review,
        "review_counts": sorted((review.get("counts") or {}).items()),
        "sample": review.get("sample", []) if shows_sample else None,
        "sample_hidden": bool(label) and not shows_sample,
        "decision_refusal": refusal(run, request.user) if run.awaits_decision else None,
        "kept": sorted(((run.details or {}).get("kept") or {}).items()),
    }


@require_POST
@run_viewer_required
def decide(request: HttpRequest, pk: int) -> HttpResponse:
    """The run page's Approve and Reject buttons."""
    run = get_object_or_404(CleanupRun.objects.select_related("schedule"), pk=pk)
    decision = request.POST.get("decision")
    try:
        if decision == "approve":
            messages.success(request, approve_run(run, request.user))
        elif decision == "reject":
            messages.success(request, reject_run(run, request.user))
        else:
            messages.error(request, "Choose approve or reject.")
    except DecisionRefused as refused:
        messages.error(request, str(refused))
    return HttpResponseRedirect(run.get_absolute_url())


REPORT_COLUMNS = [
    "run",
    "iteration",
    "status",
    "started_at",
    "finished_at",
    "cutoff",
    "task",
    "params",
    "dry_run",
    "items_deleted",
    "targets",
    "held_rule",
    "approved_by",
    "approved_at",
    "approval_of",
    "rejected_by",
    "archive_parts",
    "kept_by_holds",
    "restores",
]


def report_row(run: CleanupRun) -> dict[str, Any]:
    config = run.config or {}
    params = config.get("params") or {}
    days = params.get("older_than_days") if isinstance(params, dict) else None
    cutoff = None
    if isinstance(days, int | float) and run.started_at:
        cutoff = (run.started_at - timezone.timedelta(days=days)).isoformat()
    details = run.details or {}
    return {
        "run": run.pk,
        "iteration": run.iteration,
        "status": run.status,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "cutoff": cutoff,
        "task": run.task,
        "params": params,
        "definition": config,
        "dry_run": run.dry_run,
        "items_deleted": run.items_deleted,
        "targets": {name: c.get("items", 0) for name, c in details.get("targets", {}).items()},
        "held_rule": (run.review or {}).get("rule", ""),
        "approved_by": run.approved_by,
        "approved_at": run.approved_at.isoformat() if run.approved_at else None,
        "approval_of": run.approval_of_id,
        "rejected_by": run.rejected_by,
        "archive_parts": [
            {key: part.get(key) for key in ("name", "model", "file", "rows", "bytes", "sha256")}
            for part in run.archive_parts or []
        ],
        "kept_by_holds": details.get("kept", {}),
        "restores": run.restores or [],
    }


@run_viewer_required
def deletion_report(request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
    """Every run of a schedule as evidence: what it ran with, what went, who approved, where
    the archive is and what holds kept. Newest first."""
    schedule = get_object_or_404(CleanupSchedule, pk=pk)
    runs = schedule.runs.order_by("-iteration").exclude(status=CleanupRun.Status.SKIPPED)
    rows = [report_row(run) for run in runs.iterator(chunk_size=500)]
    filename = f"cleanups-deletions-{schedule.pk}.{fmt}"
    if fmt == "json":
        response: HttpResponse = JsonResponse(
            {"schedule": {"id": schedule.pk, "name": schedule.name}, "runs": rows},
            json_dumps_params={"indent": 2},
        )
    else:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(REPORT_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row[column]) for column in REPORT_COLUMNS])
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _cell(value: Any) -> object:
    if isinstance(value, dict | list):
        return spreadsheet_safe(json.dumps(value, sort_keys=True))
    return "" if value is None else spreadsheet_safe(value)
