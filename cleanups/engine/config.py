"""The engine's settings, read and checked: which engine, where, and which task hub."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import urlsplit

from cleanups.conf import settings

EMBEDDED_HOST = "127.0.0.1"


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
