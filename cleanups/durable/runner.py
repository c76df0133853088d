"""The worker process: embedded engine (if configured), durable worker and reconciler."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from durabletask import worker as dt_worker

from cleanups.conf import settings
from cleanups.durable.election import ask_for_sweep
from cleanups.durable.reconciler import Reconciler
from cleanups.durable.registration import ACTIVITIES, ORCHESTRATORS, register
from cleanups.engine.config import EngineConfig, EngineMode
from cleanups.engine.connection import build_embedded_engine, build_worker
from cleanups.engine.embedded import EmbeddedEngine
from cleanups.runs import worker as this_worker

logger = logging.getLogger("cleanups.worker")


class WorkerHost:
    """Owns the loop and the signal handling; the management command is a thin shell around it."""

    def __init__(
        self,
        config: EngineConfig,
        concurrency: dt_worker.ConcurrencyOptions,
        reconcile_interval: float,
        write: Callable[[str], None],
    ) -> None:
        self.config = config
        self.concurrency = concurrency
        self.write = write
        self.stopping = threading.Event()
        self.reconciler = Reconciler(this_worker.worker_id(), reconcile_interval, self.stopping)
        self.engine: EmbeddedEngine | None = None
        self.worker: dt_worker.TaskHubGrpcWorker | None = None
        self.left_work = False  # shut down without waiting for every work item (too long)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.write(f"Received {signal.Signals(signum).name}, stopping...")
        self.stopping.set()
        this_worker.STOPPING.set()

    def run(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        self.write("Starting cleanups worker...")
        self.write(f"Mode: {self.config.mode}")
        self.write(f"Using taskhub: {self.config.taskhub}")
        self.write(f"Using endpoint: {self.config.display_endpoint}")
        try:
            if self.config.mode is EngineMode.EMBEDDED:
                self.engine = build_embedded_engine(self.config)
                self.write(f"Embedded engine listening on {self.engine.start()}")
                # A new engine is an empty one: whichever worker reconciles, sweep now.
                ask_for_sweep()
            # Beat before taking work: another worker handed this one's run must see it alive,
            # or it would run the same iteration beside it.
            self.reconciler.beat()
            self.worker = register(build_worker(self.config, self.concurrency))
            self.write("Registered orchestrators: " + ", ".join(f.__name__ for f in ORCHESTRATORS))
            self.write("Registered activities: " + ", ".join(f.__name__ for f in ACTIVITIES))
            self.worker.start()
            # The lease is renewed beside the passes, so a long one (a sweep) keeps it.
            threading.Thread(
                target=self.reconciler.election.keep,
                args=(self.stopping,),
                name="cleanups-lease",
                daemon=True,
            ).start()
            self.write(f"Worker {self.reconciler.worker} started. Press Ctrl+C to stop.")
            while not self.stopping.is_set():
                self.reconciler.tick()
                self.stopping.wait(self.reconciler.interval)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        this_worker.STOPPING.set()
        if self.worker is not None:
            # The SDK waits for every work item it holds, for ever; a run's cleanup may take
            # long. Past the limit, what is left is marked interrupted and delivered again.
            stopper = threading.Thread(target=self.worker.stop, name="stop-worker", daemon=True)
            stopper.start()
            stopper.join(settings.WORKER_STOP_SECONDS)
            self.left_work = stopper.is_alive()
            if self.left_work:
                logger.warning(
                    "stopping without waiting longer for the work in progress (%s s passed)",
                    settings.WORKER_STOP_SECONDS,
                )
        self.reconciler.shutdown()
        if self.engine is not None:
            self.engine.stop(grace=1)
        self.write("Worker stopped.")
