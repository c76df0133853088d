from django.apps import AppConfig


class CleanupsConfig(AppConfig):
    name = "cleanups"
    verbose_name = "Cleanups"

    def ready(self) -> None:
        from cleanups import checks  # noqa: F401  (registers the system checks)
