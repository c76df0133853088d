"""Small formatting helpers for the admin and the pages."""

from datetime import timedelta


def human_duration(duration: timedelta) -> str:
    """A short reading of a duration: '90 s' -> '1 min 30 s', '1 day, 2:00:00' -> '1 d 2 h'."""
    total = duration.total_seconds()
    if total < 60:
        return f"{total:g} s"
    parts = []
    remaining = int(total)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        value, remaining = divmod(remaining, size)
        if value:
            parts.append(f"{value} {unit}")
    return " ".join(parts)


def seconds_label(seconds: float) -> str:
    """A run's duration as people read it: milliseconds under a second, else seconds."""
    if seconds < 1:
        if seconds == 0:
            return "0 s"
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.0095 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


# A cell starting with one of these is a formula to a spreadsheet (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell, with a leading ' if a spreadsheet would otherwise run it as a formula.
    Numbers, dates and booleans the code writes itself are not str and stay as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return f"'{value}"
    return value
