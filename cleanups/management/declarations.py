"""What syncschedules and runworker --sync say of declarations that cannot be applied."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import CommandError

# The exit status when a declaration is invalid (nothing applied).
INVALID = 2


def refuse_if_invalid(
    problems: list[str], write: Callable[[str], Any], consequence: str = "nothing was applied"
) -> None:
    """Each problem of the declarations on a line of its own, then stop with status INVALID
    (runworker --sync says the same, its worker not started)."""
    if not problems:
        return
    for problem in problems:
        write(problem)
    count = len(problems)
    raise CommandError(
        f"{count} problem{'' if count == 1 else 's'} in the declared schedules; {consequence}.",
        returncode=INVALID,
    )
