"""The task plugin API, where your code imports it from (it lives in ``cleanups.tasks``): the
registry of cleanup tasks, the context a task runs with, the batch deleter and the param helpers.

Register a task from a ``cleanup_tasks`` module in any installed app (they are discovered at
start-up, the way ``admin.py`` modules are)::

    @cleanup_task("old_exports", "Delete export files older than a week.", validate=my_validator)
    def old_exports(ctx: CleanupContext) -> str:
        ...
        ctx.deleted("exports", 3, bytes=12_000)
        return "Deleted 3 exports."
"""

from cleanups.tasks.context import CleanupContext
from cleanups.tasks.deleter import (
    AUTO_BATCH_FIRST,
    AUTO_BATCH_MAX,
    AUTO_BATCH_MIN,
    AUTO_BATCH_SECONDS,
    delete_in_batches,
    sql_cascade_plan,
)
from cleanups.tasks.measure import measure_backlog
from cleanups.tasks.params import (
    Params,
    bool_param,
    int_param,
    number_param,
    positive_days,
    reject_unknown,
)
from cleanups.tasks.registry import (
    CleanupTask,
    TaskFunction,
    Validator,
    all_tasks,
    cleanup_task,
    get_task,
    task_choices,
)

__all__ = [
    "AUTO_BATCH_FIRST",
    "AUTO_BATCH_MAX",
    "AUTO_BATCH_MIN",
    "AUTO_BATCH_SECONDS",
    "CleanupContext",
    "CleanupTask",
    "Params",
    "TaskFunction",
    "Validator",
    "all_tasks",
    "bool_param",
    "cleanup_task",
    "delete_in_batches",
    "get_task",
    "int_param",
    "measure_backlog",
    "number_param",
    "positive_days",
    "reject_unknown",
    "sql_cascade_plan",
    "task_choices",
]
