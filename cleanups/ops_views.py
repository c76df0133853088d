"""The operations endpoints of the web process: ``GET /healthz`` (the site's health checks) and
``GET /metrics`` (the fleet's state in Prometheus text format)."""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache

from cleanups.access import VIEW_SCHEDULES
from cleanups.conf import settings
from cleanups.fleet_metrics import web_exposition
from cleanups.health import run_checks


def may_see_details(request: HttpRequest) -> bool:
    """Staff who may view schedules (as the dashboard asks). False when the session cannot be
    read (the database is down): never an error."""
    try:
        user = request.user
        return bool(user.is_active and user.is_staff and user.has_perm(VIEW_SCHEDULES))
    except Exception:
        return False


@never_cache
def healthz_view(request: HttpRequest) -> JsonResponse:
    """GET /healthz: 200 {"status": "ok", "checks": {...}} or 503 with "failing"; with
    ``?verbose=1`` staff also get each check's reason."""
    report = run_checks()
    verbose = request.GET.get("verbose", "") not in ("", "0") and may_see_details(request)
    return JsonResponse(report.as_dict(reasons=verbose), status=200 if report.ok else 503)


def _bearer_token_matches(request: HttpRequest) -> bool:
    token = str(settings.METRICS_TOKEN or "")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: for staff who may view schedules, or with ``Authorization: Bearer
    <METRICS_TOKEN>``; 403 for anyone else (and for everyone but such staff while no token is
    set)."""
    if not (_bearer_token_matches(request) or may_see_details(request)):
        response = HttpResponse(
            "Forbidden: /metrics needs a staff login or the METRICS_TOKEN bearer token.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="cleanups metrics"'
        return response
    body, content_type = web_exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
