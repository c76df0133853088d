"""PostgreSQL connection pooling from the environment (DATABASE_POOL*), read by the settings.

Every durable activity closes its thread's connections when it ends (a thread left holding one
would leak it). Without a pool each run then opens a new server connection, a backend fork; with
Django's psycopg pool, closing returns the connection to the pool and the next run takes it back.
So with a pool, a thread must close its connections when done (connections.close_all()): the
pool never gets back one that a finished thread left open, and its place in the pool is lost.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

POSTGRESQL_ENGINES = {
    "django.db.backends.postgresql",
    "django.contrib.gis.db.backends.postgis",
}
DEFAULT_MIN_SIZE = 2
# A runworker's activity threads each hold a connection while their run lasts (more runs at once
# wait up to the timeout for one, then fail), and the web process has its own pool: 20 per
# process stays well under PostgreSQL's max_connections (100).
DEFAULT_MAX_SIZE = 20
DEFAULT_TIMEOUT = 10.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _whole(env: Any, name: str, default: int, least: int) -> int:
    raw = env.str(name, default=str(default)).strip()
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < least:
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a whole number of at least {least} (default {default})."
        )
    return value


def pool_options(env: Any) -> dict[str, Any] | None:
    """The psycopg_pool.ConnectionPool arguments the environment asks for, or None for no pool.

    ``env`` is a django-environ Env. A bad value raises ImproperlyConfigured naming the variable.
    """
    raw = env.str("DATABASE_POOL", default="true").strip()
    if raw.lower() in _FALSE:
        return None
    if raw.lower() not in _TRUE:
        raise ImproperlyConfigured(
            f"DATABASE_POOL={raw!r} is not a boolean: set it to true or false (default true)."
        )
    min_size = _whole(env, "DATABASE_POOL_MIN_SIZE", DEFAULT_MIN_SIZE, least=0)
    max_size = _whole(env, "DATABASE_POOL_MAX_SIZE", DEFAULT_MAX_SIZE, least=1)
    if min_size > max_size:
        raise ImproperlyConfigured(
            f"DATABASE_POOL_MIN_SIZE={min_size} is more than DATABASE_POOL_MAX_SIZE={max_size}."
        )
    raw = env.str("DATABASE_POOL_TIMEOUT", default=str(DEFAULT_TIMEOUT)).strip()
    try:
        timeout = float(raw)
    except ValueError:
        timeout = float("nan")
    if not 0 < timeout < float("inf"):  # also rejects nan
        raise ImproperlyConfigured(
            f"DATABASE_POOL_TIMEOUT={raw!r} is not a positive number of seconds "
            f"(default {DEFAULT_TIMEOUT:g})."
        )
    return {"min_size": min_size, "max_size": max_size, "timeout": timeout}


def configure(database: dict[str, Any], env: Any) -> None:
    """Turn the pool on (or leave it off) in an entry of DATABASES, in place; only PostgreSQL's
    (any other engine is left as it is, whatever DATABASE_POOL says)."""
    if database.get("ENGINE") not in POSTGRESQL_ENGINES:
        return
    options = pool_options(env)
    if options is None:
        return
    if database.get("CONN_MAX_AGE", 0) != 0:
        # Django refuses a pool with persistent connections, at the first query; say it now.
        raise ImproperlyConfigured(
            f"DATABASE_URL asks for persistent connections (conn_max_age="
            f"{database['CONN_MAX_AGE']}), which a connection pool replaces: drop conn_max_age "
            "from DATABASE_URL, or set DATABASE_POOL=false."
        )
    database["CONN_MAX_AGE"] = 0
    # A pooled connection may have died while idle (a server restart, an idle timeout): the pool
    # tries it (one empty query) before handing it out, so no run fails on a dead one.
    database.setdefault("CONN_HEALTH_CHECKS", True)
    database.setdefault("OPTIONS", {})["pool"] = options
