"""System checks: a malformed engine setting is reported by `manage.py check`, not at first use."""

from typing import Any

from django.core.checks import Error, register

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
