"""Logging helpers wired in through settings.LOGGING."""

import logging
import re

# What a log viewer may take for a new line or a terminal command: C0 and C1 controls (with
# DEL), Unicode's line and paragraph separators, and the bidirectional overrides that reorder
# what a reader sees.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def has_control_characters(text: str) -> bool:
    return CONTROL_CHARACTERS.search(text) is not None


def escape_control_characters(text: str) -> str:
    r"""Each control character as a visible escape ("\n", "\x1b", "\u2028"): one line stays one."""
    return CONTROL_CHARACTERS.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    character = match.group()
    return repr(character)[1:-1] if character.isascii() else f"\\u{ord(character):04x}"


class DropCancelledStream(logging.Filter):
    """The SDK logs its own shutdown (the work-item stream it cancelled) as a warning; drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Locally cancelled by application" not in record.getMessage()


class EscapeControlCharacters(logging.Filter):
    """A schedule's name, an error or a param with a newline cannot forge a log line.

    The whole message is escaped once its arguments are in, so it covers every argument
    (and the SDK's f-strings) without knowing which came from a person.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if has_control_characters(message):
            record.msg, record.args = escape_control_characters(message), ()
        return True
