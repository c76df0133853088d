"""OpenTelemetry traces, turned on and configured by the standard ``OTEL_*`` environment variables.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; ``OTEL_TRACES_EXPORTER=none`` and
``OTEL_SDK_DISABLED=true`` keep it off. Off, :func:`configure` reads the environment and returns:
it imports neither the OpenTelemetry SDK nor an instrumentation, and installs nothing.

On, it installs the SDK's TracerProvider as the global one (the SDK reads ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` and the exporters their
``OTEL_EXPORTER_OTLP_*`` themselves) and the instrumentations:

- Django (a span per request, around every middleware),
- the database drivers the settings use (sqlite3, psycopg): a span per statement,
- threading (a thread pool's tasks keep their caller's context: the admin's bulk actions).

The Durable Task SDK does the rest itself: the client's ``schedule_new_orchestration`` starts a
``create_orchestration:<name>`` span under the current one (the request's) and sends its context
with the start; the worker emits ``orchestration:<name>`` and, per activity,
``activity:<name>`` spans under it, and the SQL of a run nests in its activity's span. The
embedded engine carries that context as the Durable Task Scheduler does
(:class:`cleanups.durable.connection.EmbeddedEngine`), and gives each execution that a
continue-as-new begins, i.e. each later run of a schedule, a trace of its own
(:func:`execution_trace`), linked to the run before it.

Called from ``CleanupsConfig.ready()``: every process that runs Django (the web server, gunicorn's
workers, ``runworker``) configures itself there, before a WSGI handler loads the middleware list
the Django instrumentation adds to.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from durabletask.internal import tracing as dt_tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

DEFAULT_SERVICE_NAME = "cleanups"
_OFF = "none"
_lock = threading.Lock()
_installed: _Installed | None = None


class _Installed:
    """What configure() set up, so that unconfigure() can take it down again."""

    def __init__(self, provider: TracerProvider, instrumentors: list[Any]) -> None:
        self.provider = provider
        self.instrumentors = instrumentors


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the environment asks for; none: tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if raw:
        names = [name.strip().lower() for name in raw.split(",") if name.strip()]
        return [] if _OFF in names else names
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return ["otlp"] if endpoint and endpoint.strip() else []


def configure(*, span_processor: SpanProcessor | None = None) -> bool:
    """Turn tracing on if the environment asks for it; whether it is on. Idempotent.

    ``span_processor`` (tests): turn it on with this processor as the only one, whatever the
    environment says.
    """
    global _installed
    names = [] if span_processor is not None else exporter_names()
    if span_processor is None and not names:
        return False
    with _lock:
        if _installed is None:
            if span_processor is None and _configured_elsewhere():
                return True  # zero-code instrumentation (opentelemetry-instrument) did it
            _installed = _install(names, span_processor)
    return True


def _configured_elsewhere() -> bool:
    try:
        from opentelemetry import trace
    except ImportError:
        return False  # _install says what to install
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def unconfigure() -> None:
    """Undo the instrumentations and shut the provider down (tests). OpenTelemetry lets a process
    set its global TracerProvider once: the provider stays, with nothing left to export to."""
    global _installed
    with _lock:
        installed, _installed = _installed, None
    if installed is None:
        return
    for instrumentor in reversed(installed.instrumentors):
        instrumentor.uninstrument()
    installed.provider.shutdown()


def _install(names: list[str], span_processor: SpanProcessor | None) -> _Installed:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise ImproperlyConfigured(
            f"The OTEL_* environment asks for traces, but OpenTelemetry is not installed "
            f"({error}): install the `tracing` extra (pip install 'cleanups[tracing]')."
        ) from None

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource, sampler=_sampler())
    if span_processor is not None:
        provider.add_span_processor(span_processor)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    return _Installed(provider, _instrument())


def _exporter(name: str) -> Any:
    """The span exporter ``OTEL_TRACES_EXPORTER`` names; it reads its own settings."""
    if name == "otlp":
        # The specification's default protocol is http/protobuf (the Python SDK's own setup
        # defaults to gRPC); both exporters are installed with the `tracing` extra.
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        else:
            raise ImproperlyConfigured(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use "
                "http/protobuf (the default) or grpc."
            )
        return OTLPSpanExporter()
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise ImproperlyConfigured(
            f"OTEL_TRACES_EXPORTER names {name!r}, which no installed package provides "
            "(otlp, console, or none)."
        )
    return next(iter(found)).load()()


def _sampler() -> Any:
    """The sampler ``OTEL_TRACES_SAMPLER`` asks for (the SDK's default: parent-based, always
    on), but a statement that nothing traced asked for (a reconciler pass, a heartbeat, a
    management command's query) starts no trace: every few seconds, each would be a trace of one
    span. A statement of a request or of a run has its parent, and is sampled as that is."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    # The SDK builds the sampler the environment names when it is given none.
    configured = TracerProvider(shutdown_on_exit=False).sampler

    class _NoLoneStatements(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            parent = trace.get_current_span(parent_context).get_span_context()
            if kind is trace.SpanKind.CLIENT and not parent.is_valid:
                return SamplingResult(Decision.DROP)
            return configured.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"NoLoneStatements{{{configured.get_description()}}}"

    return _NoLoneStatements()


def _instrument() -> list[Any]:
    """Django, the database drivers the settings use, and threads; what was instrumented."""
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    instrumentors: list[Any] = [DjangoInstrumentor(), ThreadingInstrumentor()]
    engines = {db.get("ENGINE", "") for db in settings.DATABASES.values()}
    if any(engine.endswith("sqlite3") for engine in engines):
        from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

        instrumentors.append(SQLite3Instrumentor())
    if any("postgresql" in engine or "postgis" in engine for engine in engines):
        # Django's PostgreSQL backend (and its pool) passes a cursor_factory to
        # psycopg.Connection.connect: the instrumentation traces through it.
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        instrumentors.append(PsycopgInstrumentor())
    for instrumentor in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
    return instrumentors


def execution_trace(
    started_by: str,
    name: str,
    instance_id: str,
    previous_parent: Any = None,
    previous_span_id: str = "",
) -> Any:
    """The trace context for an execution the engine begins without one, as the SDK's
    ``TraceContext``, or None when tracing is off. The engine calls it.

    ``started_by`` is ``continue_as_new`` for a schedule's next run: each run is a trace of its
    own, as the first is the request's, linked to the run before if that was traced
    (``previous_parent``: the ``TraceContext`` its execution started with; ``previous_span_id``:
    its orchestration span's). Carried on, one trace would grow with every run of an eternal
    orchestration for as long as the schedule lives. ``create_orchestration``: a start from a
    client that sent none (a process with tracing off), so that the worker's spans of the run
    still make one trace. Either way a ``<started_by>:<name>`` span is the trace's root. No
    instrumentation exists for this: the engine is ours (the SDK's in-memory backend carries no
    trace context at all).
    """
    if not dt_tracing.OTEL_AVAILABLE or (_installed is None and not _configured_elsewhere()):
        return None  # tracing is off: no span to make (every continue-as-new asks)
    from opentelemetry import context, trace

    before = previous_parent
    if previous_parent is not None and previous_span_id:
        before = dt_tracing.reconstruct_trace_context(previous_parent, previous_span_id) or before
    links = []
    before_context = dt_tracing.extract_trace_context(before)
    if before_context is not None:
        span_context = trace.get_current_span(before_context).get_span_context()
        if span_context.is_valid:
            links.append(trace.Link(span_context))
    tracer = trace.get_tracer("cleanups.engine")
    with tracer.start_as_current_span(
        dt_tracing.create_span_name(started_by, name),
        context=context.Context(),  # a root: the run's own trace
        kind=trace.SpanKind.PRODUCER,
        attributes={
            dt_tracing.ATTR_TASK_TYPE: dt_tracing.TASK_TYPE_ORCHESTRATION,
            dt_tracing.ATTR_TASK_NAME: name,
            dt_tracing.ATTR_TASK_INSTANCE_ID: instance_id,
        },
        links=links,
    ):
        return dt_tracing.get_current_trace_context()
