"""The one list of every orchestrator and activity; runworker and the tests both use it."""

from durabletask.worker import TaskHubGrpcWorker

from cleanups.durable.activities import run_cleanup, sample_cleanup, time_out_run
from cleanups.durable.orchestrations import periodic_cleanup

ORCHESTRATORS = [periodic_cleanup]
ACTIVITIES = [run_cleanup, time_out_run, sample_cleanup]


def register(worker: TaskHubGrpcWorker) -> TaskHubGrpcWorker:
    for orchestrator in ORCHESTRATORS:
        worker.add_orchestrator(orchestrator)
    for activity in ACTIVITIES:
        worker.add_activity(activity)
    return worker
