"""Every call this process makes to the engine, counted by method and outcome: a client-side gRPC
interceptor on every client and worker channel the connection module builds.

The counter lives in prometheus_client's default registry, which ``runworker --metrics-port``
serves; the web process's ``/metrics`` registers it too (``cleanups.fleet_metrics``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter

OK = "ok"

ENGINE_REQUESTS = Counter(
    "cleanups_engine_requests",
    "Calls this process made to the Durable Task engine, by RPC method and outcome ('ok', or "
    "the gRPC status code, lower-cased). A stream (GetWorkItems) counts once, when it is opened.",
    ["method", "outcome"],
)


def short_method(method: str | bytes) -> str:
    """'GetInstance' from '/TaskHubSidecarService/GetInstance'."""
    if isinstance(method, bytes):
        method = method.decode()
    return method.rsplit("/", 1)[-1]


def outcome_of(error: BaseException | None) -> str:
    if error is None:
        return OK
    code = getattr(error, "code", None)
    status = code() if callable(code) else None
    # An error without a gRPC status (a closed channel, say) is what gRPC itself calls UNKNOWN.
    return (status if isinstance(status, grpc.StatusCode) else grpc.StatusCode.UNKNOWN).name.lower()


def _finished_outcome(call: grpc.Future) -> str:
    if call.cancelled():
        return grpc.StatusCode.CANCELLED.name.lower()
    return outcome_of(call.exception())


class CountingInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Counts each call into ENGINE_REQUESTS. A call with one answer counts when it is done
    (through its done-callback, so a ``.future()`` call is not made to wait); a stream counts
    once, when it is opened, as 'ok' unless opening it failed at once: it may stay open for the
    life of the worker, and a stream that breaks later shows in the calls that reopen it."""

    def _unary_response(self, method: Any, call: Any) -> Any:
        name = short_method(method)
        call.add_done_callback(
            lambda done: ENGINE_REQUESTS.labels(name, _finished_outcome(done)).inc()
        )
        return call

    def _stream_response(self, method: Any, call: Any) -> Any:
        failed = call.done() and not call.cancelled() and call.exception() is not None
        ENGINE_REQUESTS.labels(
            short_method(method), outcome_of(call.exception()) if failed else OK
        ).inc()
        return call

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return self._unary_response(
            client_call_details.method, continuation(client_call_details, request)
        )

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._unary_response(
            client_call_details.method, continuation(client_call_details, request_iterator)
        )

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return self._stream_response(
            client_call_details.method, continuation(client_call_details, request)
        )

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._stream_response(
            client_call_details.method, continuation(client_call_details, request_iterator)
        )


COUNTING_INTERCEPTOR = CountingInterceptor()
