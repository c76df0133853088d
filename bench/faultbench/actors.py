"""The threads that act while the bench runs: the operator, the faults (from the main thread,
which spawns), the sampler of desired and engine states, the browser and the progress lines."""

from __future__ import annotations

import random
import re
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from http.cookiejar import CookieJar
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, OpenerDirector, build_opener

from django.contrib.auth import get_user_model
from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.utils import timezone

from bench.faultbench import dbfaults
from bench.faultbench.environment import INTERVALS, PASSWORD, USERNAME, WEB_PORT
from bench.faultbench.processes import say
from bench.faultbench.record import (
    PAUSED,
    RUNNING,
    STOPPED,
    Action,
    Bench,
    Request,
    Sample,
)
from cleanups import control, instances
from cleanups.cadence import CRON, FIXED_DELAY, FIXED_RATE
from cleanups.models import CleanupRun, CleanupSchedule

# The operator ---------------------------------------------------------------------------------


def expected_after(kind: str, before: str) -> str:
    """The desired state an action leaves, as cleanups.control defines it."""
    if kind in ("start", "restart"):
        return RUNNING
    if kind == "terminate":
        return STOPPED
    if kind == "pause":
        return before if before == STOPPED else PAUSED
    if kind == "resume":
        return RUNNING if before == PAUSED else before
    return before


def act(bench: Bench, kind: str, pk: int, call: Callable[[CleanupSchedule], Any]) -> Action:
    before = bench.desired[pk]
    action = Action(kind, pk, timezone.now(), before=before, after=expected_after(kind, before))
    try:
        outcome = call(CleanupSchedule.objects.get(pk=pk))
        action.outcome = outcome if isinstance(outcome, str) else outcome.outcome.value
    except (OperationalError, InterfaceError) as error:
        # The database went away under the action (the admin answers 503): what it left is
        # what the database says once it is back.
        action.outcome = "database unavailable"
        action.detail["error"] = f"{type(error).__name__}: {error}"
        connections.close_all()
        action.after = desired_state_when_back(pk, before)
    except Exception as error:  # in the admin this would be a 500
        action.outcome = "raised"
        action.detail["error"] = f"{type(error).__name__}: {error}"
    action.done = timezone.now()
    if kind == "start":
        try:
            action.detail["anchor_at"] = (
                CleanupSchedule.objects.filter(pk=pk).values_list("anchor_at", flat=True).first()
            )
        except DatabaseError:
            connections.close_all()
    bench.desired[pk] = action.after
    bench.record(action)
    return action


def desired_state_when_back(pk: int, before: str) -> str:
    for _ in range(60):
        try:
            return str(
                CleanupSchedule.objects.filter(pk=pk).values_list("desired_state", flat=True)[0]
            )
        except (OperationalError, InterfaceError):
            connections.close_all()
            time.sleep(0.5)
    return before


def edit(schedule: CleanupSchedule, interval: float, cadence: str) -> str:
    """Change interval and cadence as the admin's change form does: validate, then save()."""
    schedule.interval = timedelta(seconds=interval)
    schedule.cadence = cadence
    schedule.changed_by = get_user_model().objects.get(username=USERNAME)
    schedule.full_clean()
    schedule.save()
    return "saved"


def operate(bench: Bench) -> None:
    rng = random.Random(f"{bench.seed}:operator")
    pks = sorted(bench.schedules)
    editable = [
        pk
        for pk, info in bench.schedules.items()
        if info.kind != "failing" and info.config.cadence != CRON
    ]
    try:
        while not bench.stop_operating.wait(rng.uniform(0.3, 1.2)):
            while bench.database_down.is_set() and not bench.stop_operating.is_set():
                time.sleep(0.1)  # its clicks would answer 503 meanwhile
            by_state: dict[str, list[int]] = defaultdict(list)
            for pk in pks:
                by_state[bench.desired[pk]].append(pk)
            idle = (len(by_state[PAUSED]) + len(by_state[STOPPED])) / len(pks)
            room = idle < 0.3  # keep most schedules running
            weights = {
                "pause": 2.0 if by_state[RUNNING] and room else 0.0,
                "terminate": 1.0 if by_state[RUNNING] and room else 0.0,
                "resume": 2.0 if by_state[PAUSED] else 0.0,
                "start": 1.5 if by_state[STOPPED] else 0.0,
                "start paused": 0.3 if by_state[PAUSED] else 0.0,
                "restart": 1.0,
                "run-now burst": 2.0 if by_state[RUNNING] else 0.0,
                "edit": 2.0 if editable else 0.0,
            }
            choice = rng.choices(list(weights), weights=list(weights.values()))[0]
            if choice == "pause":
                act(bench, "pause", rng.choice(by_state[RUNNING]), control.pause_schedule)
            elif choice == "terminate":
                act(bench, "terminate", rng.choice(by_state[RUNNING]), control.terminate_schedule)
            elif choice == "resume":
                act(bench, "resume", rng.choice(by_state[PAUSED]), control.resume_schedule)
            elif choice == "start":
                act(bench, "start", rng.choice(by_state[STOPPED]), control.start_schedule)
            elif choice == "start paused":  # an operator who clicks Start on a paused one
                act(bench, "start", rng.choice(by_state[PAUSED]), control.start_schedule)
            elif choice == "restart":
                act(bench, "restart", rng.choice(pks), control.restart_schedule)
            elif choice == "run-now burst":
                targets = rng.sample(by_state[RUNNING], min(3, len(by_state[RUNNING])))
                for _ in range(rng.randint(2, 6)):
                    act(
                        bench,
                        "run_now",
                        rng.choice(targets),
                        lambda s: control.run_now(s, USERNAME),
                    )
            else:
                pk = rng.choice(editable)
                interval = rng.choice(INTERVALS)
                cadence = rng.choice([FIXED_DELAY, FIXED_RATE])
                action = act(bench, "edit", pk, lambda s, i=interval, c=cadence: edit(s, i, c))
                action.detail.update(interval=interval, cadence=cadence)
    finally:
        connections.close_all()


# Faults (main thread: it spawns) --------------------------------------------------------------


# With --database-faults, at least every third fault is one of the database's.
DATABASE_FAULT_AT_LEAST_EVERY = 3


def inject_faults(bench: Bench, until: float) -> None:
    rng = random.Random(f"{bench.seed}:faults")
    since_database_fault = 0
    while True:
        gap = rng.uniform(2.0, 6.0)
        if time.monotonic() + gap >= until:
            time.sleep(max(0.0, until - time.monotonic()))
            return
        time.sleep(gap)
        repertoire = {"kill worker": 4, "restart engine host": 3, "stop engine host": 3}
        if bench.args.database_faults:
            repertoire.update(dbfaults.kinds())
            if since_database_fault == DATABASE_FAULT_AT_LEAST_EVERY - 1:
                repertoire = dict(dbfaults.kinds())  # a short run has its database faults too
        kind = rng.choices(list(repertoire), weights=list(repertoire.values()))[0]
        if kind in dbfaults.DATABASE_FAULT_KINDS:
            since_database_fault = 0
            bench.record(dbfaults.inject(bench, rng, kind))
            continue
        since_database_fault += 1
        fault = Action(kind, None, timezone.now())
        if kind == "kill worker":
            child = rng.choice(bench.connectors)
            down = rng.uniform(0.0, 3.0)
            fault.detail = {"worker": child.name, "pid": child.lives[-1].pid}
            child.kill()
            time.sleep(down)
            child.start_ready()
            fault.outcome = f"{child.name} SIGKILLed, started again after {down:.1f} s"
        elif kind == "restart engine host":
            window = bench.open_window()
            fault.detail = {"pid": bench.host.lives[-1].pid}
            bench.host.stop()
            bench.host.start_ready()
            window.end = timezone.now()
            fault.outcome = f"SIGTERM, back after {(window.end - fault.at).total_seconds():.1f} s"
        else:
            window = bench.open_window()
            paused_for = rng.uniform(0.5, 3.0)
            bench.host.signal(signal.SIGSTOP)
            time.sleep(paused_for)
            bench.host.signal(signal.SIGCONT)
            window.end = timezone.now()
            fault.outcome = f"SIGSTOP for {paused_for:.1f} s, then SIGCONT"
        fault.done = timezone.now()
        bench.record(fault)


# Watchers -------------------------------------------------------------------------------------


def sample_states(bench: Bench) -> None:
    """Desired states and the engine's, twice a second, for the liveness check."""
    try:
        while not bench.stop_watching.wait(0.5):
            started = timezone.now()
            try:
                rows = list(
                    CleanupSchedule.objects.values_list("pk", "desired_state", "instance_id")
                )
            except DatabaseError:
                connections.close_all()  # a dropped connection is opened again
                continue
            try:
                states = instances.fetch_runtime_states()
            except instances.EngineUnavailable:
                statuses = None
            else:
                statuses = {
                    pk: states[instance].runtime_status if instance in states else None
                    for pk, _, instance in rows
                }
            sample = Sample(started, timezone.now(), {pk: s for pk, s, _ in rows}, statuses)
            with bench.lock:
                bench.samples.append(sample)
    finally:
        connections.close_all()


def login(opener: OpenerDirector, base: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            page = opener.open(f"{base}/admin/login/", timeout=30).read().decode()
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
            assert token, "no CSRF token on the login page"
            form = {
                "username": USERNAME,
                "password": PASSWORD,
                "csrfmiddlewaretoken": token.group(1),
                "next": "/admin/",
            }
            opener.open(f"{base}/admin/login/", urlencode(form).encode(), timeout=30).read()
            return
        except (URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def browse(bench: Bench) -> None:
    """A logged-in superuser reading the pages while everything else happens."""
    rng = random.Random(f"{bench.seed}:web")
    jar = CookieJar()
    opener = build_opener(HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{WEB_PORT}"
    pks = sorted(bench.schedules)
    try:
        try:
            login(opener, base)
        except (URLError, OSError, AssertionError) as error:
            bench.requests.append(Request(timezone.now(), "/admin/login/", 0, str(error)))
            return
        if not any(cookie.name == "sessionid" for cookie in jar):
            bench.requests.append(Request(timezone.now(), "/admin/login/", 0, "login failed"))
            return
        while not bench.stop_watching.wait(rng.uniform(0.1, 0.5)):
            pk = rng.choice(pks)
            try:
                newest = (
                    CleanupRun.objects.order_by("-pk").values_list("pk", flat=True).first() or 1
                )
            except DatabaseError:
                connections.close_all()
                newest = 1
            path = rng.choice(
                [
                    "/",
                    "/?show=failing",
                    "/status.json",
                    "/runs/",
                    "/runs/?status=skipped",
                    "/runs/?status=interrupted",
                    f"/schedules/{pk}/",
                    f"/schedules/{pk}/runs/",
                    f"/runs/{rng.randint(1, newest)}/",
                    "/admin/cleanups/cleanupschedule/",
                ]
            )
            at = timezone.now()
            try:
                with opener.open(f"{base}{path}", timeout=60) as response:
                    response.read()
                    request = Request(at, path, response.status)
            except HTTPError as error:
                body = error.read().decode(errors="replace")
                title = re.search(r"<title>(.*?)</title>", body, re.S)
                note = " ".join(title.group(1).split()) if title else body[:200]
                request = Request(at, path, error.code, note)
            except (URLError, OSError) as error:
                request = Request(at, path, 0, str(error))
            with bench.lock:
                bench.requests.append(request)
    finally:
        connections.close_all()


def report_progress(bench: Bench) -> None:
    try:
        while not bench.stop_watching.wait(10.0):
            try:
                runs = CleanupRun.objects.count()
            except DatabaseError:
                connections.close_all()
                runs = -1
            elapsed = (timezone.now() - bench.began).total_seconds()
            phase = "settling" if bench.settle_started else "faults"
            say(
                f"[{elapsed:5.0f} s, {phase}] runs {runs}, faults {len(bench.faults)}, "
                f"actions {len(bench.actions)}, web requests {len(bench.requests)}"
            )
    finally:
        connections.close_all()
