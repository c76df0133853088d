"""System checks: a malformed engine setting is reported by `manage.py check`, not at first use."""

from typing import Any

from django.apps import apps
from django.core.checks import Error, register

from cleanups.conf import settings
from cleanups.durable.connection import EngineConfigError, engine_config


@register()
def check_engine_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    try:
        engine_config()
    except EngineConfigError as error:
        return [
            Error(
                str(error),
                hint="See the README's configuration section (ENDPOINT, TASKHUB, EMBEDDED_ENGINE_PORT).",
                id="cleanups.E001",
            )
        ]
    return []


@register()
def check_allowed_models(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A typo in CLEANUP_ALLOWED_MODELS would silently allow nothing it meant to."""
    errors = []
    for label in settings.CLEANUP_ALLOWED_MODELS:
        try:
            apps.get_model(label.strip())
        except (LookupError, ValueError):
            errors.append(
                Error(
                    f"CLEANUP_ALLOWED_MODELS lists {label!r}, which is not an installed model.",
                    hint='Use app_label.ModelName labels, e.g. "sessions.Session".',
                    id="cleanups.E002",
                )
            )
    return errors
