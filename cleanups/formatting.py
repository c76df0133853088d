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


_BEHIND_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60))


def behind_label(seconds: float) -> str:
    """How far behind, in the largest unit that fits: '45 seconds', '1.5 hours', '3 days'
    (a tenth under ten of a unit, whole numbers above)."""
    if seconds < 1:
        return "under a second"
    for index, (unit, size) in enumerate(_BEHIND_UNITS):
        if seconds < size:
            continue
        value = seconds / size
        shown = round(value, 1) if value < 10 else float(round(value))
        bigger = _BEHIND_UNITS[index - 1] if index else None
        if bigger is not None and shown * size >= bigger[1]:  # 59.97 minutes is an hour
            unit, shown = bigger[0], round(shown * size / bigger[1], 1)
        return f"{shown:g} {unit}{'' if shown == 1 else 's'}"
    whole = round(seconds)
    if whole >= 60:
        return "1 minute"
    return f"{whole} second{'' if whole == 1 else 's'}"


def rows_label(rows: int, capped: bool = False) -> str:
    """A count of rows: exact up to 1,000, 'about 120,000 rows' (two significant figures)
    above, 'more than 1,000,000 rows' when the count stopped at its cap."""
    if capped:
        return f"more than {rows:,} rows"
    if rows <= 1000:
        return f"{rows:,} row{'' if rows == 1 else 's'}"
    step = 10 ** (len(str(rows)) - 2)
    rounded = (rows + step // 2) // step * step
    return f"{rounded:,} rows" if rounded == rows else f"about {rounded:,} rows"


def backlog_phrase(seconds: float, rows: int | None, capped: bool = False) -> str:
    """A retention backlog as people read it: 'caught up', '3 days behind, about 120,000 rows'."""
    if seconds <= 0:
        return "caught up"
    phrase = f"{behind_label(seconds)} behind"
    if rows or capped:
        phrase += f", {rows_label(rows or 0, capped)}"
    return phrase


def one_line(error: BaseException) -> str:
    """An error as one line (its whitespace folded), at most 300 characters: for a log line or
    a health reason."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:299] + "…"
