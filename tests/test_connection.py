"""Engine settings, the clients and workers built from them, and the embedded engine."""

from __future__ import annotations

import socket
import threading
import time
from unittest import mock

import grpc
import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from durabletask.azuremanaged.client import DurableTaskSchedulerClient

from cleanups.checks import check_engine_settings
from cleanups.engine import connection
from cleanups.engine.config import EngineConfigError, EngineMode, engine_config
from cleanups.engine.connection import build_client
from cleanups.engine.embedded import EmbeddedEngine, EngineStartError
from cleanups.instances import EngineUnavailable, fetch_runtime_states
from tests.conftest import CountingEngine, free_port


def test_no_endpoint_means_the_embedded_engine(settings):
    settings.ENDPOINT = ""
    settings.EMBEDDED_ENGINE_PORT = "4123"
    config = engine_config()
    assert config.mode is EngineMode.EMBEDDED
    assert config.address == "127.0.0.1:4123"
    assert config.display_endpoint == "http://127.0.0.1:4123"
    assert config.taskhub == "default"


def test_emulator_endpoint_is_plaintext_without_credential(settings):
    settings.ENDPOINT = "http://localhost:8080"
    config = engine_config()
    assert (config.mode, config.secure, config.address) == (
        EngineMode.EMULATOR,
        False,
        "http://localhost:8080",
    )
    assert connection._credential(config) is None


@pytest.mark.parametrize(
    ("endpoint", "port", "taskhub", "message"),
    [
        ("localhost:8080", "4001", "default", "not an http:// or https:// URL"),
        ("ftp://example.com", "4001", "default", "not an http:// or https:// URL"),
        ("http://localhost:99999", "4001", "default", "invalid port"),
        ("http://localhost:8080/api", "4001", "default", "must not have a path"),
        ("", "abc", "default", "EMBEDDED_ENGINE_PORT must be a port number"),
        ("", "0", "default", "between 1 and 65535"),
        ("", "4001", "", "TASKHUB must not be empty"),
    ],
)
def test_malformed_engine_settings_are_reported_by_a_system_check(
    settings, endpoint, port, taskhub, message
):
    settings.ENDPOINT = endpoint
    settings.EMBEDDED_ENGINE_PORT = port
    settings.TASKHUB = taskhub
    with pytest.raises(EngineConfigError, match=message):
        engine_config()
    (error,) = check_engine_settings()
    assert error.id == "cleanups.E001"
    assert message in error.msg
    with pytest.raises(SystemCheckError, match=r"cleanups\.E001"):
        call_command("check")


class MetadataRecordingEngine(CountingEngine):
    """A real gRPC engine that also records the metadata each call arrived with."""

    metadata: list[dict[str, str]]

    def GetInstance(self, request, context):
        self.metadata = getattr(self, "metadata", [])
        self.metadata.append(dict(context.invocation_metadata()))
        return super().GetInstance(request, context)


def test_emulator_client_sends_the_task_hub_as_the_sdk_does(settings):
    port = free_port()
    engine = MetadataRecordingEngine(port)
    engine.start()
    try:
        settings.ENDPOINT = f"http://127.0.0.1:{port}"
        settings.TASKHUB = "my-hub"
        client = build_client()
        assert isinstance(client, DurableTaskSchedulerClient)
        assert client.get_orchestration_state("nothing-here") is None
        assert engine.metadata[-1]["taskhub"] == "my-hub"
        assert "authorization" not in engine.metadata[-1]
    finally:
        engine.stop(grace=0)


def test_azure_endpoint_uses_default_azure_credential(settings):
    # Azure AD cannot be reached from here, so the credential class is mocked; we check
    # only that the client is built with TLS and the credential the settings ask for.
    settings.ENDPOINT = "https://my-scheduler.westus2.durabletask.io"
    settings.AZURE_CLIENT_ID = "00000000-0000-0000-0000-000000000001"
    with mock.patch("azure.identity.DefaultAzureCredential") as credential:
        config = engine_config()
        client = build_client(config)
    assert config.mode is EngineMode.AZURE and config.secure
    credential.assert_called_once_with(
        managed_identity_client_id="00000000-0000-0000-0000-000000000001"
    )
    assert isinstance(client, DurableTaskSchedulerClient)
    settings.AZURE_CLIENT_ID = ""
    with mock.patch("azure.identity.DefaultAzureCredential") as credential:
        build_client(engine_config())
    credential.assert_called_once_with()


def test_embedded_engine_refuses_a_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EngineStartError, match=f"127.0.0.1:{port}: the port is in use"):
            EmbeddedEngine(port).start()


def test_embedded_engine_listens_on_loopback_only():
    port = free_port()
    engine = EmbeddedEngine(port)
    assert engine.start() == f"127.0.0.1:{port}"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        engine.stop(grace=0)


def test_an_engine_that_is_not_there_is_engine_unavailable_fast(engine_port):
    started = time.monotonic()
    with pytest.raises(EngineUnavailable):
        fetch_runtime_states()
    assert time.monotonic() - started < 3


def test_an_engine_that_never_answers_times_out(settings, engine_port):
    # A socket that accepts connections but never speaks gRPC: only the deadline saves us.
    settings.ENGINE_CALL_TIMEOUT = 1.0
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", engine_port))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(EngineUnavailable):
            fetch_runtime_states()
        assert time.monotonic() - started < 4


def test_a_client_reaches_an_engine_that_came_back_within_a_second_or_so(engine_port):
    # A web process keeps one client for its life; a runworker restart takes the engine away and
    # brings it back. gRPC's own reconnect backoff grows towards 120 s and fails every call in
    # between, so after a few seconds down the engine would stay "unreachable" long after it is up.
    failing_until = time.monotonic() + 5.5
    while time.monotonic() < failing_until:
        with pytest.raises(EngineUnavailable):
            fetch_runtime_states()
        time.sleep(0.05)
    engine = CountingEngine(engine_port)
    engine.start()
    try:
        back = time.monotonic()
        while True:
            try:
                fetch_runtime_states()
                break
            except EngineUnavailable:
                assert time.monotonic() - back < 2.5, "the engine is up; the client still fails"
                time.sleep(0.05)
    finally:
        engine.stop(grace=0.5)


def test_a_new_client_reaches_a_new_engine_on_a_port_an_old_one_used(engine_port):
    # The test suite's engines (and a runworker restarted on its port) come back on a port an
    # earlier engine used. A client built for the new one must not share the old client's
    # connection, which failed when that engine went away and fails every call until it retries.
    for _ in range(5):
        engine = CountingEngine(engine_port)
        engine.start()
        try:
            client = build_client(engine_config(), 3.0)
            client.get_orchestration_state("nobody")  # raises if it shares a failed connection
        finally:
            engine.stop(grace=0)
        with pytest.raises(grpc.RpcError):
            client.get_orchestration_state("nobody")  # the old client's connection is down now


class SlowHandshakeProxy:
    """A TCP proxy in front of an engine that lets each new connection wait `delay` seconds
    before its first byte goes through: an engine host too busy to answer a handshake at once."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay = target_port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        time.sleep(self.delay)
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def close(self) -> None:
        self.listener.close()


def test_an_engine_slow_to_answer_a_handshake_is_reached_not_reported_unreachable(
    engine_port, settings
):
    # A worker starting 2,000 schedules keeps the engine host busy; a page's (or a test's) first
    # call then waits a few hundred ms for the connection's handshake. That is a slow engine, not
    # an unreachable one: gRPC's connect timeout must allow it.
    engine = CountingEngine(engine_port)
    engine.start()
    proxy = SlowHandshakeProxy(engine_port, delay=0.5)
    try:
        settings.EMBEDDED_ENGINE_PORT = str(proxy.port)
        client = build_client(engine_config(), 3.0)
        assert client.get_orchestration_state("nobody") is None
        assert proxy.connections == 1, "one attempt, not one per backoff step"
    finally:
        proxy.close()
        engine.stop(grace=0)
