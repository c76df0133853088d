from django.apps import AppConfig


class CleanupsConfig(AppConfig):
    name = "cleanups"
    verbose_name = "Cleanups"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from cleanups import checks  # noqa: F401  (registers the system checks)
        from cleanups.models.holds import DatabaseHolds
        from cleanups.tasks import holds
        from cleanups.tracing import configure as configure_tracing

        # OpenTelemetry, if the OTEL_* environment asks for it: before any WSGI handler loads
        # the middleware (the Django instrumentation adds its own) or a connection is opened.
        configure_tracing()

        # Every deleting path asks the holds in force (the task API never imports the models).
        holds.install(DatabaseHolds())

        # Every installed app's cleanup_tasks module registers its tasks, ours included.
        autodiscover_modules("cleanup_tasks")
