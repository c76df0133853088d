"""While the database is away, the pages and the admin answer 503 with a short page: never a
500 (nothing is wrong with the request, and a probe or a person should try again soon).

``DatabaseUnavailableMiddleware`` turns a database error raised by a view (the server
restarting, a connection dropped, a pool that gave up waiting, SQLite locked beyond its busy
timeout) into that page; ``server_error`` is a ``handler500`` that does the same for one raised
anywhere else in the request (a session saved after the view), and is Django's own 500 page
otherwise.
"""

from __future__ import annotations

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseServerError
from django.views.defaults import server_error as django_server_error

from cleanups.formatting import one_line

logger = logging.getLogger("cleanups.web")
RETRY_AFTER_SECONDS = 5
PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8>"
    "<title>Database unavailable</title>"
    "<h1>The database is not answering</h1>"
    "<p>Nothing was changed. cleanups answers again as soon as its database is back: "
    "try again in a moment.</p></html>\n"
)
DATABASE_DOWN = (OperationalError, InterfaceError)


def database_unavailable(error: BaseException) -> HttpResponse:
    logger.warning("database unavailable, answered 503: %s", one_line(error))
    response = HttpResponse(PAGE, status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    return response


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):  # type: ignore[no-untyped-def]
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DATABASE_DOWN):
            return database_unavailable(exception)
        return None


def server_error(request: HttpRequest) -> HttpResponse | HttpResponseServerError:
    """handler500: 503 for a database error, Django's own 500 page for anything else."""
    error = sys.exc_info()[1]
    if isinstance(error, DATABASE_DOWN):
        return database_unavailable(error)
    return django_server_error(request)
