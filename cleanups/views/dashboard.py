"""The dashboard and its live refresh."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse

from cleanups.views.access import can_view_runs, schedule_viewer_required
from cleanups.views.dashboard_model import (
    PAGE_NUMBER,
    SINCE_TOKEN,
    Dashboard,
    DashboardQuery,
    build_dashboard,
)


def _bad_request(parameter: str, message: str) -> JsonResponse:
    return JsonResponse({"error": message, "parameter": parameter}, status=400)


def _status_url(view: Dashboard) -> str:
    """The live refresh of this very view: its filter, search, order and page."""
    number = view.page.number
    query = view.query.query_string(page=number if number > 1 else "")
    return reverse("cleanups:dashboard_status") + (f"?{query}" if query else "")


@schedule_viewer_required
def dashboard(request: HttpRequest) -> HttpResponse:
    view = build_dashboard(DashboardQuery.from_request(request), link_runs=can_view_runs(request))
    return render(
        request,
        "cleanups/dashboard.html",
        {
            **admin.site.each_context(request),
            "title": "Cleanups dashboard",
            **view.context(),
            "can_view_runs": can_view_runs(request),
            "status_url": _status_url(view),
            "since": view.token,
        },
    )


@schedule_viewer_required
def dashboard_status(request: HttpRequest) -> JsonResponse:
    """The dashboard's live refresh: the fleet's totals and figures always; with ``since``
    (the token the page or the previous refresh gave), only the rows that changed since, by
    schedule id, or the whole table when the rows themselves changed (a schedule moved, a page
    grew); without it, the whole table. A ``page`` or ``since`` it cannot read is a 400."""
    query = DashboardQuery.from_request(request)
    if query.page and not PAGE_NUMBER.fullmatch(query.page):
        return _bad_request("page", "page must be a page number (1, 2, ...).")
    since = request.GET.get("since", "")
    if since and not SINCE_TOKEN.fullmatch(since):
        return _bad_request(
            "since", "since must be the token the previous answer gave; leave it out for all rows."
        )
    view = build_dashboard(query, link_runs=can_view_runs(request))
    changed = view.changed_rows(since) if since else None
    payload: dict[str, Any] = {
        "engine_up": view.engine_up,
        "totals": view.totals,
        "schedules": view.schedule_count,
        "facts": view.facts,
        "since": view.token,
        "page": view.page.number,
    }
    if changed is None:
        payload["html"] = render_to_string("cleanups/_dashboard_rows.html", view.context(), request)
    else:
        payload["rows"] = changed
    return JsonResponse(payload)
