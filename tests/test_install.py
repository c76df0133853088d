"""cleanups as an installable app: its pages under any URL prefix, a base template the host can
override, and the built wheel in a fresh project made with ``django-admin startproject``."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit
from urllib.request import HTTPCookieProcessor, build_opener

import pytest
from django.conf import settings
from django.contrib import admin
from django.test import override_settings
from django.urls import Resolver404, include, path, resolve, reverse
from django.utils import timezone

from cleanups.models import CleanupRun
from tests.conftest import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/ops/cleanups/"

# The URLconf of a host project that mounts the app under a prefix (the in-suite tests use it).
urlpatterns = [
    path("admin/", admin.site.urls),
    path("ops/cleanups/", include("cleanups.urls")),
]

# Where a page may point: attributes holding URLs, in the app's templates and the admin's.
URL_ATTRIBUTE = re.compile(r"""\b(?:href|src|action|data-[\w-]*url)\s*=\s*["']([^"']*)["']""")


def page_urls(text: str) -> list[str]:
    return [html.unescape(value) for value in URL_ATTRIBUTE.findall(text)]


def check_links(page: str, text: str) -> set[str]:
    """Every URL ``text`` holds is a query or fragment of the page itself, a static file, the
    admin's "View site", or a root-relative path that this URLconf resolves (so a hard-coded
    ``/runs/`` would fail here); the app's own are under PREFIX. Returns the app's URL names
    it links to."""
    names = set()
    for url in page_urls(text):
        if url == "" or url.startswith(("#", "?", "http://", "https://", "mailto:")):
            continue
        assert url.startswith("/"), f"{page}: a relative link {url!r} breaks under a prefix"
        link = urlsplit(url).path
        if link.startswith(settings.STATIC_URL) or link == admin.site.site_url:
            continue
        try:
            match = resolve(link)
        except Resolver404:
            pytest.fail(f"{page}: {url!r} leads nowhere under the prefix (hard-coded?)")
        if match.namespace == "cleanups":
            assert link.startswith(PREFIX), f"{page}: {url!r}"
            names.add(match.url_name)
    return names


def rendered(client: Any, url: str) -> str:
    """A page's HTML, or the HTML fragments of its live (JSON) answer."""
    response = client.get(url)
    assert response.status_code == 200, f"{url}: {response.status_code}"
    if response["Content-Type"].startswith("application/json"):
        data = response.json()
        return "".join([data.get("html", ""), *data.get("extra", {}).values()]) + "".join(
            data.get("rows", {}).values()
        )
    return response.content.decode()


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=__name__)
def test_every_page_works_under_a_prefix_and_links_within_it(admin_client, engine, make_schedule):
    schedule = make_schedule(name="prefixed")
    now = timezone.now()
    done = CleanupRun.objects.create(
        schedule=schedule,
        iteration=1,
        status="succeeded",
        task="sample",
        started_at=now - timedelta(seconds=5),
        finished_at=now - timedelta(seconds=4),
        duration=timedelta(seconds=1),
    )
    running = CleanupRun.objects.create(
        schedule=schedule, iteration=2, status="running", task="sample", started_at=now
    )
    assert reverse("cleanups:dashboard") == PREFIX

    pages = [
        reverse("cleanups:dashboard"),
        reverse("cleanups:dashboard_status"),
        reverse("cleanups:schedule_detail", args=[schedule.pk]),
        reverse("cleanups:schedule_detail", args=[schedule.pk]) + "?live=1",
        reverse("cleanups:schedule_runs", args=[schedule.pk]),
        reverse("cleanups:runs"),
        reverse("cleanups:run_detail", args=[done.pk]),
        reverse("cleanups:run_detail", args=[running.pk]),
        reverse("cleanups:run_detail", args=[running.pk]) + "?live=1",
        reverse("admin:cleanups_cleanupschedule_changelist"),
        reverse("admin:cleanups_cleanupschedule_add"),
        reverse("admin:cleanups_cleanupschedule_change", args=[schedule.pk]),
        reverse("admin:cleanups_cleanuprun_changelist"),
        reverse("admin:cleanups_cleanuprun_change", args=[done.pk]),
    ]
    linked: set[str] = set()
    for url in pages:
        linked |= check_links(url, rendered(admin_client, url))
    # Every page of the app is linked from somewhere, under the prefix.
    assert linked >= {
        "dashboard",
        "dashboard_status",
        "schedule_detail",
        "schedule_runs",
        "runs",
        "run_detail",
        "cadence_preview",
    }

    preview = admin_client.get(reverse("cleanups:cadence_preview"), {"interval": "00:00:05"})
    assert preview.status_code == 200 and len(preview.json()["times"]) == 5


def test_the_scripts_take_their_urls_from_the_page():
    """live.js and schedule_form.js fetch only what the templates render with {% url %}
    (data-live-url, data-url): no path of their own."""
    for script in sorted((ROOT / "cleanups" / "static").rglob("*.js")):
        text = script.read_text()
        assert not re.search(r"""["'`]/(?!/)""", text), f"{script.name} holds an absolute path"
        assert "dataset." in text


@pytest.mark.django_db
def test_a_host_base_template_replaces_the_admin_look(admin_client, engine, tmp_path, settings):
    """A host's own templates/cleanups/base.html wins over the app's (which extends the admin's
    base_site.html): every page extends it."""
    (tmp_path / "cleanups").mkdir()
    (tmp_path / "cleanups" / "base.html").write_text(
        "<!doctype html><title>{% block title %}{% endblock %}</title>"
        "{% block extrahead %}{% endblock %}<main id='host-base'>"
        "{% block breadcrumbs %}{% endblock %}{% block content %}{% endblock %}</main>"
    )
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [str(tmp_path)]}]
    for url in (reverse("cleanups:dashboard"), reverse("cleanups:runs")):
        text = admin_client.get(url).content.decode()
        assert "<main id='host-base'>" in text and 'id="content-main"' in text, url
        assert "Django administration" not in text

    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": []}]
    text = admin_client.get(reverse("cleanups:dashboard")).content.decode()
    assert "host-base" not in text and 'id="site-name"' in text  # the admin's look


# --- The built wheel in a fresh project ---------------------------------------------------


class FormFields(HTMLParser):
    """The fields a browser would submit from one form, with their initial values."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.fields: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or (not a.get("name") and tag != "option"):
            return
        if tag == "input":
            kind = a.get("type", "text")
            if kind in ("submit", "button", "image", "reset", "file"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.fields[a["name"]] = a.get("value", "on" if kind == "checkbox" else "")
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select is not None:
            if self._select not in self.fields or "selected" in a:
                self.fields[self._select] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = a["name"]
            self.fields[a["name"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self.fields[self._textarea] += data.removeprefix("\n")


class Browser:
    """Just enough of one: cookies, redirects, forms with their CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = build_opener(HTTPCookieProcessor(CookieJar()))

    def get(self, url: str) -> tuple[str, str]:
        with self.opener.open(self.base + url, timeout=20) as response:
            return urlsplit(response.url).path, response.read().decode()

    def post(self, url: str, data: dict[str, str]) -> tuple[str, str]:
        with self.opener.open(self.base + url, urlencode(data).encode(), timeout=20) as response:
            return urlsplit(response.url).path, response.read().decode()

    def form(self, url: str, form_id: str) -> dict[str, str]:
        _, page = self.get(url)
        parser = FormFields(form_id)
        parser.feed(page)
        assert parser.fields, f"no form #{form_id} on {url}"
        return parser.fields


class Server:
    """A child process of the fresh project, its output in a file."""

    def __init__(self, name: str, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = cwd.parent / f"{name}.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run(
    args: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_wheel(tmp_path: Path) -> Path:
    """The wheel, built from a copy of what the package needs (so the checkout gets no build/
    or egg-info, and the build can use nothing else of the repository)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "cleanups", source / "cleanups", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path / "dist"
    # pip builds in an isolated environment with the build backend pyproject.toml names.
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, source], tmp_path)
    (wheel,) = dist.glob("cleanups-*.whl")
    return wheel


def constraints(tmp_path: Path) -> Path:
    """requirements.txt as pip constraints: the pins without their extras (pip refuses those)."""
    lines = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            lines.append(re.sub(r"\[[^\]]*\]", "", line))
    target = tmp_path / "constraints.txt"
    target.write_text("\n".join(lines) + "\n")
    return target


def fresh_env(venv: Path) -> dict[str, str]:
    """This environment less whatever points into the checkout or at its settings: the fresh
    project sees its own virtualenv and its own directory, nothing else."""
    leave_out = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "DJANGO_SETTINGS_MODULE"}
    env = {k: v for k, v in os.environ.items() if k not in leave_out}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PYTHONUNBUFFERED="1",
        PYTHONNOUSERSITE="1",
    )
    return env


HOST_SETTINGS = """
# --- cleanups, as its README says ---
INSTALLED_APPS += ["cleanups"]
DEBUG = True  # runserver serves the static files (startproject's default too)
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
# runworker hosts the embedded Durable Task engine here (ENDPOINT is empty by default).
EMBEDDED_ENGINE_PORT = "{engine_port}"
RECONCILE_INTERVAL = 1.0
"""


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.subprocess
def test_the_wheel_installs_into_a_fresh_project(tmp_path, servers):
    """Build the wheel, install it into a fresh virtualenv, start a project with django-admin
    startproject, add the app under /ops/cleanups/, migrate, run runworker and runserver, start a
    schedule through the admin and see its runs on the app's pages.

    The install is ``pip install <wheel>`` with its dependencies resolved from the wheel's own
    metadata, constrained to requirements.txt's pins (so CI runs the versions it always does,
    and pip fails if a pin falls outside a declared range), then ``pip check``. Nothing is
    borrowed from the checkout's .venv (no --system-site-packages, no .pth), so a dependency
    the app imports but does not declare fails here. pip takes the packages from its cache
    (the first run on a machine downloads them once): building takes about 2 s, the virtualenv
    2.5 s, the install 5 s, the whole test 12-19 s on 2 cores. Every command runs in tmp_path
    with a clean PYTHONPATH and no DJANGO_SETTINGS_MODULE.
    """
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "cleanups/migrations/0001_initial.py",
        "cleanups/templates/cleanups/base.html",
        "cleanups/templates/cleanups/dashboard.html",
        "cleanups/static/cleanups/live.js",
        "cleanups/static/cleanups/cleanups.css",
        "cleanups/management/commands/runworker.py",
        "cleanups/templatetags/cleanups_tags.py",
    ):
        assert expected in names
    assert not [n for n in names if n.startswith(("cleanupsite/", "tests/", "bench/"))]

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    python = str(venv / "bin" / "python")
    env = fresh_env(venv)
    run([python, "-m", "pip", "install", "-q", "-c", constraints(tmp_path), wheel], tmp_path, env)
    run([python, "-m", "pip", "check"], tmp_path, env)

    run([str(venv / "bin" / "django-admin"), "startproject", "hostsite"], tmp_path, env)
    project = tmp_path / "hostsite"
    engine_port, web_port = free_port(), free_port()
    with (project / "hostsite" / "settings.py").open("a") as out:
        out.write(HOST_SETTINGS.format(engine_port=engine_port))
    urls = project / "hostsite" / "urls.py"
    text = urls.read_text().replace(
        "from django.urls import path", "from django.urls import include, path"
    )
    mount = '    path("ops/cleanups/", include("cleanups.urls")),\n'
    urls.write_text(re.sub(r"(\s+path\('admin/', admin.site.urls\),\n)", rf"\1{mount}", text))
    assert mount in urls.read_text()

    # The app comes from the wheel in the virtualenv; nothing of the checkout is importable.
    where = json.loads(
        run(
            [
                python,
                "-c",
                "import cleanups, importlib.util, json, sys; print(json.dumps([cleanups.__file__,"
                " sys.path, importlib.util.find_spec('cleanupsite') is None]))",
            ],
            project,
            env,
        )
    )
    assert where[0].startswith(str(venv)), where[0]
    assert not [p for p in where[1] if p.startswith(str(ROOT))], where[1]
    assert where[2], "cleanupsite is importable from the fresh project"

    manage = [python, "manage.py"]
    run([*manage, "check", "--fail-level", "WARNING"], project, env)
    run([*manage, "migrate", "--noinput", "-v0"], project, env)
    password = "install-test-password"
    admin_env = {**env, "DJANGO_SUPERUSER_PASSWORD": password}
    run(
        [
            *manage,
            "createsuperuser",
            "--noinput",
            "--username",
            "admin",
            "--email",
            "a@example.com",
        ],
        project,
        admin_env,
    )
    worker = Server("runworker", [*manage, "runworker"], project, env)
    servers.append(worker)
    web = Server(
        "runserver", [*manage, "runserver", "--noreload", f"127.0.0.1:{web_port}"], project, env
    )
    servers.append(web)

    def logs() -> str:
        return f"--- runworker\n{worker.output}\n--- runserver\n{web.output}"

    browser = Browser(f"http://127.0.0.1:{web_port}")

    def web_up() -> bool:
        try:
            return browser.get("/admin/login/")[0] == "/admin/login/"
        except (URLError, ConnectionError):
            assert web.process.poll() is None, logs()
            return False

    def worker_up() -> bool:
        assert worker.process.poll() is None, logs()
        return "Press Ctrl+C to stop" in worker.output

    wait_until(web_up, timeout=30, interval=0.2)
    wait_until(worker_up, timeout=30, interval=0.2)

    login = browser.form("/admin/login/?next=/admin/", "login-form")
    landed, _ = browser.post(
        "/admin/login/?next=/admin/", {**login, "username": "admin", "password": password}
    )
    assert landed == "/admin/", "not logged in"

    add_url = "/admin/cleanups/cleanupschedule/add/"
    fields = browser.form(add_url, "cleanupschedule_form")
    fields.update(
        name="from the wheel",
        task="sample",
        params=json.dumps({"seconds": 0}),
        interval="00:00:02",
        _save="Save",
    )
    landed, page = browser.post(add_url, fields)
    assert landed == "/admin/cleanups/cleanupschedule/", re.findall(r"errorlist.*", page)
    pk = re.search(r'href="/admin/cleanups/cleanupschedule/(\d+)/change/', page).group(1)

    changelist = browser.form("/admin/cleanups/cleanupschedule/", "changelist-form")
    _, page = browser.post(
        "/admin/cleanups/cleanupschedule/",
        {
            "csrfmiddlewaretoken": changelist["csrfmiddlewaretoken"],
            "action": "start_schedules",
            "_selected_action": pk,
            "index": "0",
            "select_across": "0",
        },
    )
    assert '<li class="error">' not in page, page

    runs_url = f"{PREFIX}schedules/{pk}/runs/"

    def succeeded_run() -> str | None:
        try:
            _, text = browser.get(runs_url)
        except HTTPError as error:
            pytest.fail(f"{runs_url}: {error}\n{logs()}")
        return text if "run-status-succeeded" in text else None

    try:
        runs_page = wait_until(succeeded_run, timeout=45, interval=0.5)
    except AssertionError:
        pytest.fail(f"no succeeded run on {runs_url}:\n{logs()}")
    run_links = re.findall(r'href="(/[^"]*/runs/\d+/)"', runs_page)
    assert run_links and all(link.startswith(PREFIX) for link in run_links), run_links
    _, run_page = browser.get(run_links[-1])
    assert "Succeeded" in run_page and "sample" in run_page

    for url in (PREFIX, f"{PREFIX}schedules/{pk}/", runs_url, f"{PREFIX}runs/"):
        landed, text = browser.get(url)
        assert landed == url
        assert "from the wheel" in text
        app_links = [
            link
            for link in page_urls(text)
            if link.startswith("/")
            and not link.startswith(("/admin/", "/static/"))
            and link != "/"  # the admin's "View site"
        ]
        assert app_links and all(link.startswith(PREFIX) for link in app_links), (url, app_links)
    # The app's static files are served to the host (runserver, DEBUG on).
    _, script = browser.get("/static/cleanups/live.js")
    assert "liveUrl" in script
