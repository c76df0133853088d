"""`python manage.py ensureadmin`: make sure an admin login exists and say what it is."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from cleanups.conf import settings


class Command(BaseCommand):
    help = (
        "Create the admin login if it is missing; a generated password is printed then only. "
        "The username comes from ADMIN_USERNAME (default 'admin'); the password from "
        "ADMIN_PASSWORD, or else one is generated once and kept in .local/admin-password "
        "(mode 0600)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--password-file",
            default=str(Path(getattr(settings, "BASE_DIR", ".")) / ".local" / "admin-password"),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username = os.environ.get("ADMIN_USERNAME") or "admin"
        given = os.environ.get("ADMIN_PASSWORD") or ""
        password_file = Path(options["password_file"])

        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            if given:
                User.objects.create_superuser(username=username, email="", password=given)
                self.stdout.write(f"Created admin login: {username} (password from ADMIN_PASSWORD)")
                return
            password = kept_password(password_file)
            User.objects.create_superuser(username=username, email="", password=password)
            # Shown this once: the output of every later start (often a log) never holds it.
            self.stdout.write(f"Created admin login: {username} / {password}")
        elif given and not user.check_password(given):
            user.set_password(given)
            user.save(update_fields=["password"])
            self.stdout.write(f"Admin login: {username} (password set from ADMIN_PASSWORD)")
        elif given:
            self.stdout.write(f"Admin login: {username} (password from ADMIN_PASSWORD)")
        elif password_file.is_file() and user.check_password(password_file.read_text().strip()):
            self.stdout.write(f"Admin login: {username} (password in {password_file})")
        else:
            self.stdout.write(f"Admin login: {username} (existing user; password unchanged)")


def kept_password(password_file: Path) -> str:
    """The password kept in ``password_file``, or a new one written there for us alone."""
    try:
        password = password_file.read_text().strip()
    except FileNotFoundError:
        password = ""
    if password:
        return password
    password = secrets.token_urlsafe(12)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.unlink(missing_ok=True)  # an empty file a crash left: made anew, private
    # Created 0600 (O_EXCL: never an existing file's mode), not chmod-ed once the password is in.
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    return password
