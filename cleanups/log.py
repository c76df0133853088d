"""Logging helpers wired in through settings.LOGGING."""

import logging


class DropCancelledStream(logging.Filter):
    """The SDK logs its own shutdown (the work-item stream it cancelled) as a warning; drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Locally cancelled by application" not in record.getMessage()
