"""Who may see the pages: staff with the models' view permissions."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse

from cleanups.access import VIEW_RUNS, VIEW_SCHEDULES

View = Callable[..., HttpResponse]


def staff_with_permissions(*perms: str) -> Callable[[View], View]:
    """Staff holding ``perms`` only. Anyone else is sent to the admin login, as the admin does;
    staff without them get a 403, since logging in again would not help."""

    def decorator(view: View) -> View:
        return staff_member_required(permission_required(perms, raise_exception=True)(view))

    return decorator


schedule_viewer_required = staff_with_permissions(VIEW_SCHEDULES)
run_viewer_required = staff_with_permissions(VIEW_SCHEDULES, VIEW_RUNS)


def can_view_runs(request: HttpRequest) -> bool:
    """Whether the page may show runs' errors and link to run pages (read from the permission
    cache the decorator filled: no query)."""
    return request.user.has_perm(VIEW_RUNS)
