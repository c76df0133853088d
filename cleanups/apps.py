from django.apps import AppConfig


class CleanupsConfig(AppConfig):
    name = "cleanups"
    verbose_name = "Cleanups"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from cleanups import checks  # noqa: F401  (registers the system checks)

        # Every installed app's cleanup_tasks module registers its tasks, ours included.
        autodiscover_modules("cleanup_tasks")
