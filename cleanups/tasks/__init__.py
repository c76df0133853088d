"""The task plugin API: the registry, the context a task runs with, the batch deleter and the
param helpers. It imports only leaves, never the models: a run saves through the run object it
is handed. ``cleanups.registry`` is its documented import path."""
