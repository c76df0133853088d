"""The one place that builds Durable Task clients and workers (and the embedded engine) from
settings: nothing else constructs them."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc
from durabletask import client as dt_client
from durabletask import worker as dt_worker
from durabletask.azuremanaged.client import DurableTaskSchedulerClient
from durabletask.grpc_options import GrpcChannelOptions
from durabletask.internal.grpc_interceptor import _ClientCallDetails

from cleanups.conf import settings
from cleanups.engine.config import EngineConfig, EngineMode, engine_config
from cleanups.engine.counting import COUNTING_INTERCEPTOR
from cleanups.engine.embedded import EmbeddedEngine
from cleanups.engine.ontime import OnTimeSchedulerWorker, OnTimeWorker

# The SDK's loggers, named so Django's LOGGING settings govern them.
CLIENT_LOGGER = logging.getLogger("durabletask.client")
WORKER_LOGGER = logging.getLogger("durabletask.worker")


class _DeadlineInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Give every unary call without a deadline one, so a dead engine fails fast."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        if client_call_details.timeout is None:
            client_call_details = _ClientCallDetails(
                client_call_details.method,
                self.timeout,
                client_call_details.metadata,
                client_call_details.credentials,
                client_call_details.wait_for_ready,
                client_call_details.compression,
            )
        return continuation(client_call_details, request)


def _credential(config: EngineConfig) -> Any:
    if config.mode is not EngineMode.AZURE:
        return None
    from azure.identity import DefaultAzureCredential

    if config.azure_client_id:
        return DefaultAzureCredential(managed_identity_client_id=config.azure_client_id)
    return DefaultAzureCredential()


# gRPC waits up to 120 s between attempts to reach an engine that was down, and fails every call
# in between at once: a web process would report an engine that is back as unreachable for
# minutes after a runworker restart. Retry the connection at least once a second instead.
# "min_reconnect_backoff" is, despite its name, how long one attempt may take (gRPC's
# MIN_CONNECT_TIMEOUT, the subchannel's ParseArgsForBackoffValues): give it seconds, so an engine
# host busy enough to answer a handshake in 200 ms is reached, not reported unreachable.
# And give each client connections of its own: gRPC shares them between channels to the same
# address by default, so a new client for an engine that is up would inherit the failing state
# of an older client's connection to an engine that was on that port before, and fail at once.
CONNECT_TIMEOUT_MS = 5000
_CLIENT_CHANNEL = GrpcChannelOptions(
    raw_options=[
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
)


def build_client(
    config: EngineConfig | None = None, call_timeout: float | None = None
) -> dt_client.TaskHubGrpcClient:
    """A new client for the configured engine. Most code wants the shared `get_client()`."""
    config = config or engine_config()
    interceptors = [
        _DeadlineInterceptor(call_timeout or settings.ENGINE_CALL_TIMEOUT),
        COUNTING_INTERCEPTOR,
    ]
    if config.mode is EngineMode.EMBEDDED:
        return dt_client.TaskHubGrpcClient(
            host_address=config.address,
            secure_channel=False,
            interceptors=interceptors,
            channel_options=_CLIENT_CHANNEL,
            logger=CLIENT_LOGGER,
        )
    return DurableTaskSchedulerClient(
        host_address=config.address,
        taskhub=config.taskhub,
        token_credential=_credential(config),
        secure_channel=config.secure,
        interceptors=interceptors,
        channel_options=_CLIENT_CHANNEL,
        logger=CLIENT_LOGGER,
    )


@functools.lru_cache(maxsize=8)
def _cached_client(config: EngineConfig, call_timeout: float) -> dt_client.TaskHubGrpcClient:
    return build_client(config, call_timeout)


def get_client(call_timeout: float | None = None) -> dt_client.TaskHubGrpcClient:
    """The process-wide client for the configured engine (gRPC channels are thread-safe)."""
    return _cached_client(engine_config(), call_timeout or settings.ENGINE_CALL_TIMEOUT)


def build_worker(
    config: EngineConfig | None = None,
    concurrency: dt_worker.ConcurrencyOptions | None = None,
) -> dt_worker.TaskHubGrpcWorker:
    """A new worker for the configured engine, with nothing registered yet."""
    config = config or engine_config()
    if config.mode is EngineMode.EMBEDDED:
        return OnTimeWorker(
            host_address=config.address,
            secure_channel=False,
            interceptors=[COUNTING_INTERCEPTOR],
            concurrency_options=concurrency,
            channel_options=_CLIENT_CHANNEL,
            logger=WORKER_LOGGER,
        )
    return OnTimeSchedulerWorker(
        host_address=config.address,
        taskhub=config.taskhub,
        token_credential=_credential(config),
        secure_channel=config.secure,
        interceptors=[COUNTING_INTERCEPTOR],
        concurrency_options=concurrency,
        channel_options=_CLIENT_CHANNEL,
        logger=WORKER_LOGGER,
    )


def build_embedded_engine(config: EngineConfig) -> EmbeddedEngine:
    assert config.port is not None
    return EmbeddedEngine(config.port)
