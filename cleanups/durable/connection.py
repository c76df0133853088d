"""The one place that builds Durable Task clients, workers and the embedded engine from settings."""

from __future__ import annotations

import enum
import functools
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from django.conf import settings
from durabletask import client as dt_client
from durabletask import worker as dt_worker
from durabletask.azuremanaged.client import DurableTaskSchedulerClient
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from durabletask.internal.grpc_interceptor import _ClientCallDetails
from durabletask.testing import InMemoryOrchestrationBackend

EMBEDDED_HOST = "127.0.0.1"
# The SDK's loggers, named so Django's LOGGING settings govern them.
_CLIENT_LOGGER = logging.getLogger("durabletask.client")
_WORKER_LOGGER = logging.getLogger("durabletask.worker")


class EngineMode(enum.StrEnum):
    EMBEDDED = "embedded"
    EMULATOR = "emulator"
    AZURE = "azure"


class EngineConfigError(ValueError):
    """The engine settings cannot work; the message says which one and why."""


@dataclass(frozen=True)
class EngineConfig:
    mode: EngineMode
    address: str  # what the SDK connects to: host:port, or the http(s):// endpoint
    taskhub: str
    secure: bool
    port: int | None = None  # embedded engine only
    azure_client_id: str = ""

    @property
    def display_endpoint(self) -> str:
        return f"http://{self.address}" if self.mode is EngineMode.EMBEDDED else self.address


def engine_config() -> EngineConfig:
    """Read ENDPOINT, TASKHUB and EMBEDDED_ENGINE_PORT; raise EngineConfigError if malformed."""
    endpoint = (settings.ENDPOINT or "").strip()
    taskhub = (settings.TASKHUB or "").strip()
    if not taskhub:
        raise EngineConfigError("TASKHUB must not be empty (the sample's default is 'default').")
    if not endpoint:
        port = _parse_port(str(settings.EMBEDDED_ENGINE_PORT), "EMBEDDED_ENGINE_PORT")
        return EngineConfig(
            EngineMode.EMBEDDED, f"{EMBEDDED_HOST}:{port}", taskhub, secure=False, port=port
        )
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineConfigError(
            f"ENDPOINT {endpoint!r} is not an http:// or https:// URL "
            "(e.g. http://localhost:8080 for the emulator)."
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EngineConfigError(f"ENDPOINT {endpoint!r} must not have a path, query or fragment.")
    try:
        _ = parts.port  # urlsplit only checks the port when asked
    except ValueError:
        raise EngineConfigError(f"ENDPOINT {endpoint!r} has an invalid port.") from None
    address = endpoint.rstrip("/")
    if parts.scheme == "http":
        return EngineConfig(EngineMode.EMULATOR, address, taskhub, secure=False)
    return EngineConfig(
        EngineMode.AZURE, address, taskhub, secure=True, azure_client_id=settings.AZURE_CLIENT_ID
    )


def _parse_port(value: str, name: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise EngineConfigError(f"{name} must be a port number, not {value!r}.") from None
    if not 1 <= port <= 65535:
        raise EngineConfigError(f"{name} must be between 1 and 65535, not {port}.")
    return port


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


def build_client(
    config: EngineConfig | None = None, call_timeout: float | None = None
) -> dt_client.TaskHubGrpcClient:
    """A new client for the configured engine. Most code wants the shared `get_client()`."""
    config = config or engine_config()
    interceptors = [_DeadlineInterceptor(call_timeout or settings.ENGINE_CALL_TIMEOUT)]
    if config.mode is EngineMode.EMBEDDED:
        return dt_client.TaskHubGrpcClient(
            host_address=config.address,
            secure_channel=False,
            interceptors=interceptors,
            logger=_CLIENT_LOGGER,
        )
    return DurableTaskSchedulerClient(
        host_address=config.address,
        taskhub=config.taskhub,
        token_credential=_credential(config),
        secure_channel=config.secure,
        interceptors=interceptors,
        logger=_CLIENT_LOGGER,
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
        return dt_worker.TaskHubGrpcWorker(
            host_address=config.address,
            secure_channel=False,
            concurrency_options=concurrency,
            logger=_WORKER_LOGGER,
        )
    return DurableTaskSchedulerWorker(
        host_address=config.address,
        taskhub=config.taskhub,
        token_credential=_credential(config),
        secure_channel=config.secure,
        concurrency_options=concurrency,
        logger=_WORKER_LOGGER,
    )


class EngineStartError(RuntimeError):
    pass


class EmbeddedEngine(InMemoryOrchestrationBackend):
    """The SDK's own gRPC backend, listening on loopback only (the SDK binds every interface)."""

    def __init__(self, port: int) -> None:
        super().__init__(port=port)

    def start(self) -> str:
        self._shutdown_event.clear()
        server = grpc.server(
            ThreadPoolExecutor(max_workers=16),
            options=[("grpc.so_reuseport", 0)],
        )
        stubs.add_TaskHubSidecarServiceServicer_to_server(self, server)
        address = f"{EMBEDDED_HOST}:{self._port}"
        # Try the port ourselves first: gRPC reports a busy port with a raw C-level log line.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((EMBEDDED_HOST, self._port))
            except OSError:
                raise EngineStartError(_port_in_use(address)) from None
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise EngineStartError(_port_in_use(address))
        self._server = server
        server.start()
        return address


def _port_in_use(address: str) -> str:
    return (
        f"cannot listen on {address}: the port is in use (is another runworker running?). "
        "Set EMBEDDED_ENGINE_PORT to use another port."
    )


def build_embedded_engine(config: EngineConfig) -> EmbeddedEngine:
    assert config.port is not None
    return EmbeddedEngine(config.port)
