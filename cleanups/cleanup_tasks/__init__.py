"""The built-in cleanup tasks. Discovered like any app's ``cleanup_tasks`` module: importing this
package registers them all."""

from cleanups.cleanup_tasks import archives, files, history, rows
from cleanups.cleanup_tasks.files import FILES_PER_BATCH, allowed_dirs
from cleanups.cleanup_tasks.rows import FILTER_LOOKUPS, TEXT_LOOKUPS, protected_field

__all__ = [
    "FILES_PER_BATCH",
    "FILTER_LOOKUPS",
    "TEXT_LOOKUPS",
    "allowed_dirs",
    "archives",
    "files",
    "history",
    "protected_field",
    "rows",
]
