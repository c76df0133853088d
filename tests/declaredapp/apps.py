from django.apps import AppConfig


class DeclaredAppConfig(AppConfig):
    """An app that declares schedules in its cleanup_schedules module (tests.settings_declared)."""

    name = "tests.declaredapp"
    label = "declaredapp"
