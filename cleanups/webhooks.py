"""The webhook client: one JSON POST, retried, to an address that the SSRF rule allows.

- A schedule's webhooks are whatever a staff editor typed. They may not reach loopback,
  private, link-local or other non-public addresses (the host itself, or any address its name
  resolves to) unless ``ALERT_WEBHOOK_ALLOWED_HOSTS`` lists the host. Checked when the form is
  saved and again at every delivery, which connects to the very addresses it checked (no second
  look-up for DNS to change in between) and follows no redirect. The site-wide
  ``ALERT_WEBHOOKS`` are the deployer's and trusted (``trusted=True``).
- A webhook is recorded and logged as ``scheme://host/…`` (``redact``): its path and query may
  hold a token (Slack's do).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass
from http import client as http_client
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from cleanups.conf import settings
from cleanups.log import escape_control_characters

MAX_URL_LENGTH = 2000
# Response statuses worth another attempt; any other non-2xx is final.
RETRY_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "cleanups-alerts/1"
# NAT64's well-known prefix: such an address reaches the IPv4 address inside it.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    error: str = ""
    status: int | None = None


class Refused(Exception):
    """The webhook may not be reached (SSRF rule): final, never retried."""


def deliver(url: str, body: dict[str, Any], *, trusted: bool = False) -> Delivery:
    """POST ``body`` as JSON to ``url``, retrying a network error, a time-out, a 5xx, 408, 425 or
    429 with exponential backoff. ``trusted``: a site-wide webhook, exempt from the SSRF rule."""
    data = json.dumps(body).encode()
    attempts = max(int(settings.ALERT_WEBHOOK_ATTEMPTS), 1)
    backoff = max(float(settings.ALERT_WEBHOOK_BACKOFF_SECONDS), 0.0)
    error, status = "", None
    for attempt in range(1, attempts + 1):
        try:
            status, reason = _post(url, data, trusted=trusted)
        except Refused as refused:
            return Delivery(False, attempt, f"Refused: {refused}")
        except (OSError, http_client.HTTPException, ValueError) as problem:
            status, retry = None, True
            error = _describe(problem, url)
        else:
            if 200 <= status < 300:
                return Delivery(True, attempt, status=status)
            error = f"HTTP {status} {reason}".strip()
            if 300 <= status < 400:
                error += " (redirects are not followed)"
            retry = status in RETRY_STATUSES or status >= 500
        if not retry or attempt == attempts:
            return Delivery(False, attempt, error, status)
        time.sleep(backoff * 2 ** (attempt - 1))
    return Delivery(False, attempts, error, status)  # pragma: no cover (the loop returns)


def _post(url: str, data: bytes, *, trusted: bool) -> tuple[int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("only http and https URLs with a host are webhooks")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not trusted and not host_allowed(host):
        internal = [a for a in addresses if is_internal(a[1][0])]
        if internal:
            raise Refused(_internal_message(host, internal[0][1][0]))
    timeout = float(settings.ALERT_WEBHOOK_TIMEOUT)
    connection: http_client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        connection = http_client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http_client.HTTPConnection(host, port, timeout=timeout)
    # Connect to the addresses just checked, never to a second look-up's (TLS still verifies
    # the certificate against the host name).
    connection._create_connection = functools.partial(_connect, addresses)  # type: ignore[attr-defined]
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
    }
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=data, headers=headers)
        response = connection.getresponse()
        response.read(65536)
        return response.status, response.reason or ""
    finally:
        connection.close()


def _resolve(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise OSError(f"cannot resolve {host}: {error}") from error
    return [(family, sockaddr) for family, _, _, _, sockaddr in found]


def _connect(
    addresses: list[tuple[int, tuple[Any, ...]]],
    address: Any,
    timeout: float | None = None,
    source_address: Any = None,
) -> socket.socket:
    last: OSError = OSError("no address to connect to")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as error:
            sock.close()
            last = error
    raise last


def _describe(problem: BaseException, url: str) -> str:
    """An error as one line that never repeats the URL's path or query (a token may be there)."""
    text = f"{type(problem).__name__}: {problem}" if str(problem) else type(problem).__name__
    parts = urlsplit(url)
    for secret in (parts.path, parts.query, parts.password or "", url):
        if secret and len(secret) > 1:
            text = text.replace(secret, "…")
    return escape_control_characters(text)[:500]


# The SSRF rule --------------------------------------------------------------------------------


def is_internal(address: str) -> bool:
    """Not a public unicast address: loopback, private, link-local, shared, reserved, multicast,
    unspecified (also as IPv4-mapped or NAT64 IPv6)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
        address.split("%", 1)[0]
    )
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return not ip.is_global or ip.is_multicast


def host_allowed(host: str) -> bool:
    """Whether ALERT_WEBHOOK_ALLOWED_HOSTS lets a schedule's webhook reach ``host`` although it
    is internal."""
    allowed = {
        h.strip().lower().strip("[]") for h in settings.ALERT_WEBHOOK_ALLOWED_HOSTS or [] if h
    }
    return host.lower().strip("[]") in allowed


def _internal_message(host: str, address: str) -> str:
    where = host if host == address else f"{host} ({address})"
    return (
        f"{where} is an internal address (loopback, private or link-local); a deployer may "
        "allow it with ALERT_WEBHOOK_ALLOWED_HOSTS"
    )


def webhook_problem(url: str) -> str | None:
    """Why a schedule's webhook URL cannot be saved; None when it can. A host name is looked
    up: if any address it has is internal, it is refused (one that does not resolve now is
    accepted: every delivery checks again)."""
    if len(url) > MAX_URL_LENGTH:
        return f"a webhook URL can be at most {MAX_URL_LENGTH} characters"
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        return "only http:// and https:// webhooks are allowed"
    try:
        URLValidator(schemes=["http", "https"])(url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
    except (ValidationError, ValueError):
        return "not a valid URL"
    if not host:
        return "not a valid URL"
    if host_allowed(host):
        return None
    try:
        addresses = [sockaddr[0] for _, sockaddr in _resolve(host, port)]
    except OSError:
        return None
    internal = [address for address in addresses if is_internal(address)]
    if internal:
        return _internal_message(host, internal[0])
    return None


def redact(url: str) -> str:
    """``scheme://host[:port]/…``: what a webhook may be shown and logged as."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}{f':{port}' if port else ''}/"
    if parts.path.strip("/") or parts.query:
        shown += "…"
    return escape_control_characters(shown)


def hostname(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
