"""The fault-injection bench, run by bench/faults.py (whose docstring says what it does and
what it checks), in parts by job:

* environment: the environment every process reads, then django.setup();
* processes: the ``manage.py`` children (the workers and the web server);
* record: what happened (schedules, actions, faults, samples, requests, runs), shared by the
  threads and read by the checks;
* actors: the threads that act during the run (operator, faults, sampler, browser, progress);
* driver: the set-up and the run, from the first migration to what the checks read;
* slots, invariants: the checks, every guarantee's violations counted;
* report: the Markdown report, ``VIOLATIONS`` and ``SUMMARY``, and ``--recheck``.

Importing any of them sets up the environment and Django first (this file imports
``environment`` before anything else), so the models import as usual after it.
"""

from bench.faultbench import environment as environment
