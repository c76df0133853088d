"""Template filters of the run pages."""

from __future__ import annotations

from datetime import timedelta

from django import template

from cleanups.formatting import seconds_label

register = template.Library()


@register.filter
def duration_label(duration: timedelta | None) -> str:
    """A run's duration as people read it ('4 ms', '1.25 s'), or a dash when it has none."""
    return "–" if duration is None else seconds_label(duration.total_seconds())
