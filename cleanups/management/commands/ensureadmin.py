"""`python manage.py ensureadmin`: make sure an admin login exists and say what it is."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Create the admin login if it is missing and print it. The username comes from "
        "ADMIN_USERNAME (default 'admin'); the password from ADMIN_PASSWORD, or else one is "
        "generated once and kept in .local/admin-password."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--password-file", default=str(Path(settings.BASE_DIR) / ".local" / "admin-password")
        )

    def handle(self, *args: Any, **options: Any) -> None:
        import os

        username = os.environ.get("ADMIN_USERNAME") or "admin"
        password = os.environ.get("ADMIN_PASSWORD") or ""
        password_file = Path(options["password_file"])
        if not password and password_file.is_file():
            password = password_file.read_text().strip()
        if not password:
            password = secrets.token_urlsafe(12)
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)

        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            User.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"Created admin login: {username} / {password}")
        elif user.check_password(password):
            self.stdout.write(f"Admin login: {username} / {password}")
        elif os.environ.get("ADMIN_PASSWORD"):
            user.set_password(password)
            user.save(update_fields=["password"])
            self.stdout.write(
                f"Admin login (password from ADMIN_PASSWORD): {username} / {password}"
            )
        else:
            self.stdout.write(f"Admin login: {username} (existing user; password unchanged)")
