"""`python manage.py runworker`: run the durable worker until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection
from durabletask.worker import ConcurrencyOptions

from cleanups import declared
from cleanups.conf import settings
from cleanups.durable.ops import open_ops_servers, port_number
from cleanups.durable.runner import WorkerHost
from cleanups.engine.config import EngineConfigError, engine_config
from cleanups.engine.embedded import EngineStartError
from cleanups.management.arguments import positive_float, positive_int
from cleanups.management.declarations import refuse_if_invalid
from cleanups.models import CleanupSchedule
from cleanups.registry import all_tasks


class Command(BaseCommand):
    # A bad engine setting should be one readable line, so handle() checks it before the rest.
    requires_system_checks: list[str] = []
    help = (
        "Run the durable worker: executes periodic_cleanup orchestrations and cleanup activities, "
        "and reconciles schedules with the engine. With ENDPOINT unset it also hosts the "
        "embedded engine. Stops cleanly on Ctrl+C or SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--max-activities",
            type=positive_int,
            default=None,
            help="Most cleanup activities this worker runs at once (the SDK's "
            "maximum_concurrent_activity_work_items; default 100 per CPU; cleanup runs, each "
            "on a thread of its own, never more than 128 at once).",
        )
        parser.add_argument(
            "--max-orchestrations",
            type=positive_int,
            default=None,
            help="Most orchestration work items processed at once (the SDK's "
            "maximum_concurrent_orchestration_work_items; default 100 per CPU).",
        )
        parser.add_argument(
            "--threads",
            type=positive_int,
            default=None,
            help="Size of the SDK's thread pool, which steps the orchestrations (the SDK's "
            "maximum_thread_pool_workers; default CPUs + 4). Cleanup runs have threads of "
            "their own.",
        )
        parser.add_argument(
            "--list-tasks",
            action="store_true",
            help="List every registered cleanup task (built-in and from apps' cleanup_tasks "
            "modules) and exit.",
        )
        parser.add_argument(
            "--reconcile-interval",
            type=positive_float,
            default=None,
            help="Seconds between reconciler passes (default RECONCILE_INTERVAL, 5).",
        )
        parser.add_argument(
            "--sync",
            action="store_true",
            help="Before starting, sync the schedules declared in code (as `manage.py "
            "syncschedules`, without --adopt); an invalid declaration stops it with one line "
            "per problem, nothing applied.",
        )
        parser.add_argument(
            "--health-port",
            type=port_number,
            default=None,
            help="Serve GET /healthz on this port: 200 while this process is live (its work-item "
            "stream to the engine is open and its reconciler passed within two reconcile "
            "intervals), 503 otherwise. For a liveness probe.",
        )
        parser.add_argument(
            "--metrics-port",
            type=port_number,
            default=None,
            help="Serve GET /metrics on this port: this process's run counters and histograms "
            "and its reconciler's actions, in Prometheus text format. May be the --health-port.",
        )
        parser.add_argument(
            "--ops-host",
            default="127.0.0.1",
            help="The address --health-port and --metrics-port listen on (default 127.0.0.1; "
            "0.0.0.0 for probes and scrapes from outside the machine or container, as "
            "Kubernetes').",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list_tasks"]:
            for task in all_tasks():
                self.stdout.write(f"{task.name}\n    {task.description}")
            return

        try:
            config = engine_config()
        except EngineConfigError as error:
            raise CommandError(str(error)) from None
        self.check()
        try:
            tables = connection.introspection.table_names()
        except DatabaseError as error:
            raise CommandError(f"cannot open the database: {error}") from None
        if CleanupSchedule._meta.db_table not in tables:
            raise CommandError(
                "the database is not migrated: run `python manage.py migrate` first."
            )
        if options["sync"]:
            self._sync()
        connection.close()

        host = WorkerHost(
            config,
            ConcurrencyOptions(
                maximum_concurrent_activity_work_items=options["max_activities"],
                maximum_concurrent_orchestration_work_items=options["max_orchestrations"],
                maximum_thread_pool_workers=options["threads"],
            ),
            options["reconcile_interval"] or settings.RECONCILE_INTERVAL,
            write=lambda line: (self.stdout.write(line), self.stdout.flush()),
        )
        ops = open_ops_servers(
            host, options["ops_host"], options["health_port"], options["metrics_port"]
        )
        for line in ops.listening:
            self.stdout.write(f"Serving {line}")
        try:
            host.run()
        except EngineStartError as error:
            raise CommandError(str(error)) from None
        finally:
            ops.close()
        if host.left_work:
            # The SDK's threads still hold work it would wait for at exit: leave now. Our runs
            # are marked interrupted, and the engine delivers their work again.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    def _sync(self) -> None:
        """syncschedules before the engine is up: the desired states it writes are what this
        worker's reconciler makes the engine agree with on its first pass."""
        self.stdout.write("Syncing the schedules declared in code...")
        try:
            result = declared.sync()
        except declared.DeclarationError as error:
            refuse_if_invalid(
                error.problems,
                self.stderr.write,
                "nothing was applied and the worker did not start",
            )
            raise
        for line in [*result.plan.lines(), *(f"warning: {w}" for w in result.warnings)]:
            self.stdout.write(line)
        self.stdout.write(result.plan.summary(applied=True))
        self.stdout.flush()
