"""
Real framework apps for C{test_e2e_frameworks.py}: Flask, FastAPI and a
Django site with its admin, written into a worker dir by L{build_apps}, and
the little a test needs to act like a browser on their HTML (L{Page}).

The Django apps share one sqlite database, made once by L{prepare_django}
(C{migrate} and a superuser, in a child process: the test process never
configures Django).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

from e2e_apps import write_app

ADMIN_USER = "admin"
ADMIN_PASSWORD = "e2e-admin-pass-31c"

STREAM_FIRST = b"a" * 1000
STREAM_SECOND = b"b" * 1000
"""The two chunks of Flask's C{/drip}: together well under one AMP chunk (60 KiB)."""

FLASK = """
    import hashlib
    import itertools
    import os
    import time

    from flask import Flask, Response, request, stream_with_context

    app = Flask(__name__)
    hits = itertools.count(1)

    FIRST = b"a" * 1000
    SECOND = b"b" * 1000


    @app.before_request
    def seen():
        # before routing, which would redirect "//x//y" to "/x/y" (merge_slashes)
        if "seen" in request.args:
            return {key: request.environ[key] for key in ("SCRIPT_NAME", "PATH_INFO")}
        return None


    @app.get("/hits")
    def count():
        return {"pid": os.getpid(), "hits": next(hits)}


    @app.get("/custom")
    def custom():
        return "custom", "299 Custom Thing"


    @app.get("/page")
    def page():
        return "<!doctype html><html><head><title>flask</title></head><body>hi</body></html>"


    @app.post("/upload")
    def upload():
        digest, size = hashlib.sha256(), 0
        while chunk := request.stream.read(65536):
            digest.update(chunk)
            size += len(chunk)
        return {"size": size, "sha256": digest.hexdigest()}


    @app.get("/drip")
    def drip():
        @stream_with_context
        def chunks():
            release = request.args["release"]
            yield FIRST
            for _ in range(1500):  # at most 30 s
                if os.path.exists(release):
                    break
                time.sleep(0.02)
            yield SECOND

        length = str(len(FIRST) + len(SECOND))
        return Response(chunks(), content_type="text/plain", headers={"Content-Length": length})
"""
"""
Flask: C{?seen} anywhere answers C{SCRIPT_NAME}/C{PATH_INFO}; C{/hits}
counts in memory; C{/custom} has its own reason phrase; C{POST /upload}
answers the size and SHA-256 of the body it read from C{request.stream};
C{/drip} streams
two chunks with a C{Content-Length}, the second once the file named by
C{?release} exists.
"""

FASTAPI = """
    import asyncio
    import hashlib
    import itertools
    import os
    from pathlib import Path

    from fastapi import BackgroundTasks, FastAPI, Request
    from fastapi.responses import HTMLResponse

    app = FastAPI()
    hits = itertools.count(1)


    async def write_later(target):
        await asyncio.sleep(0.5)
        Path(target).write_text("written by a background task")


    @app.get("/hits")
    async def count():
        return {"pid": os.getpid(), "hits": next(hits)}


    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"item_id": item_id}


    @app.get("/page", response_class=HTMLResponse)
    async def page():
        return "<!doctype html><html><head><title>fastapi</title></head><body>hi</body></html>"


    @app.get("/later")
    async def later(target: str, background: BackgroundTasks):
        background.add_task(write_later, target)
        return {"pid": os.getpid()}


    @app.post("/upload")
    async def upload(request: Request):
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return {"size": size, "sha256": digest.hexdigest()}


    @app.get("/{rest:path}")
    async def seen(rest: str, request: Request):
        return {
            "root_path": request.scope["root_path"],
            "path": request.scope["path"],
            "rest": rest,
        }
"""
"""
FastAPI: C{/hits} counts in memory; C{/items/abc} is a validation error;
C{/later?target=...} answers, then a background task writes C{target}
0.5 s later; C{POST /upload} answers the size and SHA-256 of the body it
read from C{request.stream()}; any other path answers C{root_path} and
C{path}.
"""

DJANGO_SETTINGS = """
    import os

    SECRET_KEY = "e2e-not-a-secret"
    DEBUG = False
    ALLOWED_HOSTS = ["127.0.0.1"]
    INSTALLED_APPS = [
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.staticfiles",
    ]
    MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ]
    ROOT_URLCONF = "site_urls"
    TEMPLATES = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ],
            },
        },
    ]
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["SITE_SQLITE"]},
    }
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, tests only
    DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
    STATIC_URL = "static/"
    USE_TZ = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
"""

DJANGO_URLS = """
    from django.contrib import admin
    from django.http import JsonResponse
    from django.urls import path


    def forwarded(request):
        return JsonResponse(
            {
                "is_secure": request.is_secure(),
                "forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR"),
            }
        )


    urlpatterns = [path("admin/", admin.site.urls), path("forwarded", forwarded)]
"""

DJANGO_APP = """
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
"""

DJANGO_BOOTSTRAP = f"""
    import django

    django.setup()

    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    User.objects.create_superuser({ADMIN_USER!r}, "admin@example.com", {ADMIN_PASSWORD!r})
"""
"""Run once (L{prepare_django}): the tables and a superuser."""

DJANGO_SETTINGS_MODULE = "site_settings"


def django_files() -> dict[str, str]:
    return {
        "app.py": DJANGO_APP,
        "site_settings.py": DJANGO_SETTINGS,
        "site_urls.py": DJANGO_URLS,
        "bootstrap.py": DJANGO_BOOTSTRAP,
    }


def django_env(database: Path) -> dict[str, str]:
    return {"DJANGO_SETTINGS_MODULE": DJANGO_SETTINGS_MODULE, "SITE_SQLITE": str(database)}


def build_apps(root: Path, database: Path) -> None:
    """
    Write every app: C{flask-app}, C{fastapi-app} and C{dj} with the default
    manifest; C{flask-eph} and C{fastapi-eph} with C{ttl: 0};
    C{fastapi-5m} with C{ttl: 5m}; C{dj-based} with C{injectBase: true}.
    """
    for suffix, manifest in (("app", {}), ("eph", {"ttl": 0}), ("5m", {"ttl": "5m"})):
        write_app(root, f"fastapi-{suffix}", manifest=manifest, files={"app.py": FASTAPI})
        if suffix != "5m":
            write_app(root, f"flask-{suffix}", manifest=manifest, files={"app.py": FLASK})
    env = django_env(database)
    write_app(root, "dj", manifest={"env": env}, files=django_files())
    based = {"env": env, "injectBase": True}
    write_app(root, "dj-based", manifest=based, files=django_files())


def prepare_django(app: Path, database: Path) -> None:
    """Create the Django apps' database (tables and superuser) with the app's own code."""
    env = {**os.environ, **django_env(database)}
    subprocess.run(
        [sys.executable, "bootstrap.py"],
        cwd=app,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


class Page(HTMLParser):
    """
    What a browser takes from an HTML page at C{url}: links, C{<base>} tags
    and form fields, and where a link leads (L{resolve}).
    """

    def __init__(self, url: str, html: str) -> None:
        super().__init__()
        self.url = url
        self.links: list[str] = []
        self.bases: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.fields: dict[str, str] = {}
        self.feed(html)
        self.close()

    def resolve(self, href: str) -> str:
        """The URL C{href} leads to: against the first C{<base href>} if any, else the page URL."""
        base = urllib.parse.urljoin(self.url, self.bases[0]) if self.bases else self.url
        return urllib.parse.urljoin(base, href)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "a" and "href" in found:
            self.links.append(found["href"])
        elif tag == "base" and "href" in found:
            self.bases.append(found["href"])
        elif tag == "form":
            self.forms.append(found)
        elif tag == "input" and "name" in found:
            self.fields[found["name"]] = found.get("value", "")
