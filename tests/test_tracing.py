"""OpenTelemetry: one trace per run, from the admin's request through the orchestration and its
activity down to the run's SQL; and nothing at all unless the OTEL_* environment asks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.urls import reverse
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from cleanups import tracing
from cleanups.models import CleanupRun
from tests.conftest import ROOT, wait_until

ORCHESTRATION = "orchestration:periodic_cleanup"
ACTIVITY = "activity:run_cleanup"
CREATE = "create_orchestration:periodic_cleanup"
CONTINUE = "continue_as_new:periodic_cleanup"
DJANGO_SCOPE = "opentelemetry.instrumentation.django"
SQLITE_SCOPE = "opentelemetry.instrumentation.sqlite3"
PSYCOPG_SCOPE = "opentelemetry.instrumentation.psycopg"


def _forget_global_tracer_provider() -> None:
    """OpenTelemetry sets the global provider once per process; the next test must find none
    (as OpenTelemetry's own test utilities reset it)."""
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory; every instrumentation undone afterwards."""
    if tracing._installed is not None or tracing._configured_elsewhere():
        pytest.skip("tracing is already configured in this process (OTEL_* in the environment)")
    exporter = InMemorySpanExporter()
    assert tracing.configure(span_processor=SimpleSpanProcessor(exporter))
    _new_connections()  # opened from now on, through the instrumented driver
    yield exporter
    tracing.unconfigure()
    _new_connections()
    _forget_global_tracer_provider()
    assert not [m for m in settings.MIDDLEWARE if "opentelemetry" in m]  # the next test's as ever


def _new_connections() -> None:
    """Close this thread's connections and PostgreSQL's pools (which would hand out connections
    opened before), so that the next ones are opened anew."""
    for connection in connections.all():
        connection.close()
        if connection.vendor == "postgresql" and connection.settings_dict["OPTIONS"].get("pool"):
            connection.close_pool()


def _id(span: ReadableSpan | None) -> int | None:
    return span.context.span_id if span is not None else None


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _one(candidates: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(candidates) == 1, f"{what}: {[s.name for s in candidates]}"
    return candidates[0]


def _statement(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("db.statement") or attributes.get("db.query.text") or "")


def _tree(spans: list[ReadableSpan]) -> str:
    """The spans as an indented tree (shown when an assertion fails)."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = _parent(span)
        by_parent.setdefault(parent if parent in ids else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            lines.append(
                f"{'  ' * depth}{span.name} [{span.kind.name}] "
                f"trace={span.context.trace_id:032x} span={span.context.span_id:016x} "
                f"parent={_parent(span) or 0:016x} {_statement(span)[:60]}"
            )
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


@pytest.mark.django_db(transaction=True)
def test_an_admin_start_is_one_trace_per_run_from_request_to_sql(
    spans, admin_client, engine, worker, make_schedule
):
    began = time.time_ns()
    # Two runs a second apart, then the orchestration completes (and emits its last span).
    schedule = make_schedule(
        name="traced", interval=timedelta(seconds=1), max_iterations=2, params={"seconds": 0}
    )

    response = admin_client.post(
        reverse("admin:cleanups_cleanupschedule_changelist"),
        {"action": "start_schedules", "_selected_action": [schedule.pk]},
    )
    assert response.status_code == 302

    succeeded = CleanupRun.objects.filter(schedule=schedule, status=CleanupRun.Status.SUCCEEDED)
    wait_until(lambda: succeeded.count() == 2, timeout=30)
    # The SDK emits an orchestration's span when its execution ends (continue-as-new, complete).
    wait_until(
        lambda: len([s for s in spans.get_finished_spans() if s.name == ORCHESTRATION]) == 2,
        timeout=30,
    )
    finished = list(spans.get_finished_spans())
    tree = _tree(finished)

    # --- the first run: the operator's request is its root --------------------------------
    request = _one(
        [
            s
            for s in finished
            if s.instrumentation_scope.name == DJANGO_SCOPE and s.kind is SpanKind.SERVER
        ],
        "Django request spans",
    )
    assert request.parent is None, tree
    assert "POST" in request.name, request.name
    first_trace = request.context.trace_id
    in_first = [s for s in finished if s.context.trace_id == first_trace]

    create = _one([s for s in in_first if s.name == CREATE], CREATE)
    assert create.kind is SpanKind.PRODUCER and _parent(create) == _id(request), tree
    orchestration = _one([s for s in in_first if s.name == ORCHESTRATION], ORCHESTRATION)
    assert orchestration.kind is SpanKind.SERVER, tree
    assert _parent(orchestration) == _id(create), tree
    assert orchestration.attributes["durabletask.task.instance_id"] == schedule.instance_id
    activity_call = _one(
        [s for s in in_first if s.name == ACTIVITY and s.kind is SpanKind.CLIENT], "call"
    )
    assert _parent(activity_call) == _id(orchestration), tree
    activity = _one(
        [s for s in in_first if s.name == ACTIVITY and s.kind is SpanKind.SERVER], ACTIVITY
    )
    assert _parent(activity) == _id(activity_call), tree

    db_scopes = {SQLITE_SCOPE, PSYCOPG_SCOPE}
    run_sql = [
        s
        for s in in_first
        if s.instrumentation_scope.name in db_scopes and _parent(s) == _id(activity)
    ]
    statements = [_statement(s) for s in run_sql]
    assert any(st.startswith("INSERT") and "cleanups_cleanuprun" in st for st in statements), tree
    assert any(st.startswith("UPDATE") and "cleanups_cleanuprun" in st for st in statements), tree
    assert all(s.kind is SpanKind.CLIENT for s in run_sql)
    # The request's own statements (session, user, the schedule's start) are under it.
    assert any(
        s.instrumentation_scope.name in db_scopes and _parent(s) == _id(request) for s in in_first
    ), tree
    # Every span of the trace hangs from the request: no orphan, no second root.
    ids = {s.context.span_id for s in in_first}
    assert [s.name for s in in_first if s.parent is None] == [request.name], tree
    assert all(_parent(s) in ids for s in in_first if s is not request), tree

    # --- the second run (continue-as-new): a trace of its own, linked to the first ----------
    second = _one(
        [s for s in finished if s.name == ORCHESTRATION and s.context.trace_id != first_trace],
        "second run's orchestration",
    )
    in_second = [s for s in finished if s.context.trace_id == second.context.trace_id]
    root = _one([s for s in in_second if s.parent is None], "second run's root")
    assert root.name == CONTINUE and _parent(second) == _id(root), tree
    assert [link.context.span_id for link in root.links] == [_id(orchestration)], tree
    second_activity = _one(
        [s for s in in_second if s.name == ACTIVITY and s.kind is SpanKind.SERVER], ACTIVITY
    )
    assert any(
        s.instrumentation_scope.name in db_scopes and _parent(s) == _id(second_activity)
        for s in in_second
    ), tree
    ids = {s.context.span_id for s in in_second}
    assert all(_parent(s) in ids for s in in_second if s is not root), tree

    # Times from this test, not 1970: the engine stamps the events the worker times spans by.
    assert all(s.start_time >= began and s.end_time >= s.start_time for s in finished), tree
    # No statement outside a request or a run started a trace of its own (the reconciler's).
    assert {s.context.trace_id for s in finished} == {first_trace, second.context.trace_id}, tree


@pytest.mark.django_db(transaction=True)
def test_a_start_from_an_untraced_client_still_makes_one_trace_of_the_run(
    spans, engine, worker, make_schedule
):
    from durabletask.internal import tracing as dt_tracing

    from cleanups import control

    schedule = make_schedule(name="untraced-start", max_iterations=1, params={"seconds": 0})
    with dt_tracing.suppress_span_emission():  # as a process with tracing off starts it
        assert control.start_schedule(schedule).outcome is control.Outcome.STARTED
    wait_until(lambda: [s for s in spans.get_finished_spans() if s.name == ORCHESTRATION])
    finished = list(spans.get_finished_spans())
    tree = _tree(finished)
    assert not [s for s in finished if s.instrumentation_scope.name == DJANGO_SCOPE]

    root = _one([s for s in finished if s.name == CREATE], CREATE)
    assert root.parent is None and root.instrumentation_scope.name == "cleanups.engine", tree
    in_trace = [s for s in finished if s.context.trace_id == root.context.trace_id]
    orchestration = _one([s for s in in_trace if s.name == ORCHESTRATION], ORCHESTRATION)
    assert _parent(orchestration) == _id(root), tree
    activity = _one(
        [s for s in in_trace if s.name == ACTIVITY and s.kind is SpanKind.SERVER], ACTIVITY
    )
    assert any(_parent(s) == _id(activity) and _statement(s) for s in in_trace), tree
    ids = {s.context.span_id for s in in_trace}
    assert all(_parent(s) in ids for s in in_trace if s is not root), tree


SNAPSHOT = """
import json, sys
import django
django.setup()
from django.core.management import call_command
call_command("check", verbosity=0)
from django.conf import settings
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
from cleanups import tracing
print("RESULT " + json.dumps({
    "sdk": [m for m in loaded if m.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation"))],
    "middleware": [m for m in settings.MIDDLEWARE if "opentelemetry" in m],
    "installed": tracing._installed is not None,
}))
"""


def _snapshot(**env: str) -> dict[str, Any]:
    """A fresh Django process (as `manage.py check` sets up) and what tracing set up in it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", SNAPSHOT],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "cleanupsite.settings_test", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    line = next(li for li in result.stdout.splitlines() if li.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.parametrize(
    "env",
    [{}, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["unset", "exporter-none"],
)
def test_without_otel_settings_tracing_installs_nothing(env):
    snapshot = _snapshot(**env)
    # Not even imported: the SDK, the instrumentations. (The Durable Task SDK imports the
    # OpenTelemetry API itself when it is installed; with no provider it is a no-op.)
    assert snapshot == {"sdk": [], "middleware": [], "installed": False}


def test_otel_settings_turn_tracing_on():
    snapshot = _snapshot(OTEL_TRACES_EXPORTER="console")
    assert snapshot["installed"]
    assert len(snapshot["middleware"]) == 1  # the Django instrumentation's, added in ready()
    assert "opentelemetry.instrumentation.sqlite3" in snapshot["sdk"] or (
        "opentelemetry.instrumentation.psycopg" in snapshot["sdk"]
    )


WITHOUT_OPENTELEMETRY = """
import sys
sys.modules["opentelemetry"] = None  # as if the `tracing` extra were not installed
import django
from django.core.exceptions import ImproperlyConfigured
try:
    django.setup()
except ImproperlyConfigured as error:
    print("RESULT " + str(error))
else:
    from cleanups import tracing
    print("RESULT " + repr((tracing.configure(), tracing.execution_trace("continue_as_new", "o", "i"))))
"""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "(False, None)"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "OpenTelemetry is not installed"),
    ],
    ids=["off", "asked-for"],
)
def test_without_the_packages_the_app_runs_untraced(env, expected):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENTELEMETRY],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "cleanupsite.settings_test", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout


def test_exporter_names_follow_the_standard_variables():
    assert tracing.exporter_names({}) == []
    assert tracing.exporter_names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == ["otlp"]
    assert tracing.exporter_names({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"}) == [
        "otlp"
    ]
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "console,otlp"}) == ["console", "otlp"]
    assert (
        tracing.exporter_names(
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
        )
        == []
    )
    assert (
        tracing.exporter_names({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []
    )
