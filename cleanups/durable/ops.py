"""runworker's operations port(s): ``--health-port`` serves ``GET /healthz`` (this process's
liveness) and ``--metrics-port`` serves ``GET /metrics`` (this process's counters, Prometheus text
format); one port may serve both. A small ThreadingHTTPServer per port, on ``--ops-host``
(127.0.0.1 unless told otherwise), on a daemon thread, closed when the worker stops."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.core.management.base import CommandError
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric

from cleanups.health import WorkerLiveness
from cleanups.metrics import worker_exposition

logger = logging.getLogger("cleanups.worker")
HEALTH, METRICS = "/healthz", "/metrics"


def port_number(value: str) -> int:
    """argparse type of --health-port and --metrics-port."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, not {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, not {port}")
    return port


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: int, paths: frozenset[str], host: Any):
        self.address_family = family
        self.paths = paths
        self.liveness = WorkerLiveness(host)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks its name up with getfqdn(), a DNS query that may hang.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that sends nothing does not hold a thread for ever
    server_version = "cleanups-runworker"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path not in self.server.paths:
            self._send(404, "text/plain; charset=utf-8", b"Not found.\n")
            return
        try:
            if parts.path == HEALTH:
                report = self.server.liveness.report()
                verbose = parse_qs(parts.query).get("verbose", [""])[-1] not in ("", "0")
                body = json.dumps(report.as_dict(reasons=verbose)).encode()
                self._send(200 if report.ok else 503, "application/json", body)
            else:
                body, content_type = worker_exposition(self.headers.get("Accept", ""))
                self._send(200, content_type, body)
        except Exception:
            logger.exception("ops port: could not answer %s", parts.path)
            self._send(500, "text/plain; charset=utf-8", b"Internal error.\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("ops port: " + format, *args)


class _LivenessCollector:
    """This worker's liveness as gauges, in its /metrics."""

    def __init__(self, liveness: WorkerLiveness) -> None:
        self.liveness = liveness

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "cleanups_worker_stream_connected",
            "1 if this worker's work-item stream to the engine is open, else 0.",
            value=1 if self.liveness.stream().ok else 0,
        )
        age = self.liveness.reconciler_age()
        yield GaugeMetricFamily(
            "cleanups_reconciler_last_pass_age_seconds",
            "Seconds since this worker's reconciler ended its last pass (or began the one it is "
            "in); +Inf before its first.",
            value=float("inf") if age is None else age,
        )


class OpsServers:
    """The servers of one runworker; ``close()`` stops them (safe to call with none)."""

    def __init__(self, servers: list[_Server], collector: _LivenessCollector | None) -> None:
        self.servers = servers
        self.collector = collector
        self.threads: list[threading.Thread] = []

    @property
    def listening(self) -> list[str]:
        """What each server serves where: "/healthz and /metrics on http://127.0.0.1:9100"."""
        return [
            f"{' and '.join(sorted(server.paths))} on http://{_display(server.server_address)}"
            for server in self.servers
        ]

    def start(self) -> None:
        for server in self.servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.5},
                name=f"ops-{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        for thread in self.threads:
            thread.join(timeout=5)
        self.servers, self.threads = [], []
        if self.collector is not None:
            REGISTRY.unregister(self.collector)  # type: ignore[arg-type]
            self.collector = None


def _display(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def open_ops_servers(
    host: Any, ops_host: str, health_port: int | None, metrics_port: int | None
) -> OpsServers:
    """Bind the ports asked for (one server per distinct port) and start serving; a port that
    cannot be bound is a CommandError of one line, before anything else has started."""
    wanted: dict[int, set[str]] = {}
    if health_port is not None:
        wanted.setdefault(health_port, set()).add(HEALTH)
    if metrics_port is not None:
        wanted.setdefault(metrics_port, set()).add(METRICS)
    servers: list[_Server] = []
    try:
        for port, paths in wanted.items():
            option = " and ".join(
                name
                for name, path in (("--health-port", HEALTH), ("--metrics-port", METRICS))
                if path in paths
            )
            servers.append(_bind(ops_host, port, frozenset(paths), host, option))
    except CommandError:
        for server in servers:
            server.server_close()
        raise
    collector = None
    if metrics_port is not None:
        collector = _LivenessCollector(servers[0].liveness)
        REGISTRY.register(collector)  # type: ignore[arg-type]
    ops = OpsServers(servers, collector)
    ops.start()
    return ops


def _bind(address: str, port: int, paths: frozenset[str], host: Any, option: str) -> _Server:
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    try:
        family = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0][0]
    except (socket.gaierror, UnicodeError) as error:
        raise CommandError(
            f"cannot listen on {where} for {option}: {address!r} is not an address of this "
            f"machine ({error}). Pass --ops-host 127.0.0.1, 0.0.0.0 or one of its addresses."
        ) from None
    try:
        return _Server((address, port), family, paths, host)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            why = "the port is in use (is another runworker running?). Pass another port."
        elif error.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges). Pass another port."
        else:
            why = f"{error.strerror or error}."
        raise CommandError(f"cannot listen on {where} for {option}: {why}") from None
