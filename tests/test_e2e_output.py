"""
An app's output through a real runtime: a traceback is one log record,
whatever printed it (the worker for an app that raised, Flask's logger,
C{traceback.print_exc()}), with the id of the request it happened in, also
when two requests in one worker print at the same time.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_apps import write_app
from eliottree import render_tasks, tasks_from_iterable
from runtime import RuntimeProcess, Runtimes
from twisted.internet.defer import Deferred, gatherResults

pytestmark = pytest.mark.e2e

FLASK_APP = """
    from flask import Flask

    app = Flask(__name__)

    def lookup(marker):
        try:
            return {}[marker]
        except KeyError as error:
            raise ValueError(f"no value for {marker}") from error

    @app.route("/")
    def index():
        return "up"

    @app.route("/boom/<marker>")
    def boom(marker):
        return lookup(marker)
"""

WSGI_APP = """
    import threading
    import traceback

    both = threading.Barrier(2, timeout=10)

    def fail(marker):
        try:
            raise KeyError(marker)
        except KeyError as error:
            raise RuntimeError(f"failed {marker}") from error

    def app(environ, start_response):
        how, _, marker = environ["PATH_INFO"].strip("/").partition("/")
        if how == "raise":
            fail(marker)  # the worker prints the traceback
        if how == "together":
            both.wait()
            try:
                fail(marker)
            except RuntimeError:
                traceback.print_exc()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"printed"]
"""

ASGI_APP = """
    import asyncio
    import traceback

    waiting = []

    def fail(marker):
        try:
            raise KeyError(marker)
        except KeyError:
            raise RuntimeError(f"failed {marker}")

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        *_, how, marker = scope["path"].split("/")  # the path has the app's base in front
        if how == "together":
            waiting.append(marker)
            for _ in range(1000):
                if len(waiting) >= 2:
                    break
                await asyncio.sleep(0.01)
        print(f"handling {marker}")
        try:
            fail(marker)
        except RuntimeError:
            traceback.print_exc()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"printed"})
"""

PERSISTENT = {"version": "1.0.0", "ttl": "5m"}


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("output-apps")
    write_app(root, "flaskboom", "1.0.0", manifest=PERSISTENT, files={"app.py": FLASK_APP})
    write_app(root, "wsgiboom", "1.0.0", manifest=PERSISTENT, files={"app.py": WSGI_APP})
    write_app(root, "asgiboom", "1.0.0", manifest=PERSISTENT, files={"app.py": ASGI_APP})
    return root


@pytest_twisted.async_yield_fixture(scope="module")
async def shared(worker_dir: Path):
    from twisted.internet import reactor

    factory = Runtimes(reactor)
    try:
        yield await factory.start(worker_dirs=[str(worker_dir)], env={"RUNTIME_ENV": "test"})
    finally:
        await factory.kill_all()


async def get(proc: RuntimeProcess, path: str, request_id: str) -> int:
    response = await proc.get(path, headers={"x-request-id": request_id})
    await response.content()
    assert response.headers.getRawHeaders("x-request-id") == [request_id]
    return response.code


async def output_of(proc: RuntimeProcess, request_id: str, contains: str) -> list[dict[str, Any]]:
    """The output records of C{request_id}, once one of them C{contains} the text."""

    def output(line: dict[str, Any]) -> bool:
        return line.get("message_type") == "buntime:worker:output"

    await proc.wait_for_log(
        lambda line: (
            output(line) and line.get("request_id") == request_id and contains in line["message"]
        ),
        timeout=10,
    )
    return [line for line in proc.lines if output(line) and line.get("request_id") == request_id]


def tracebacks(proc: RuntimeProcess, needle: str) -> list[dict[str, Any]]:
    """Output records holding (a part of) a traceback that mentions C{needle}."""
    return [
        line
        for line in proc.messages("buntime:worker:output")
        if needle in line["message"]
        and ("Traceback" in line["message"] or "File " in line["message"])
    ]


@pytest_twisted.ensureDeferred
async def test_flask_exception_is_one_record_with_the_request_id(shared):
    assert await get(shared, "/flaskboom@1/", "flask-warm") == 200
    assert await get(shared, "/flaskboom@1/boom/apple", "flask-boom-1") == 500
    [record] = await output_of(shared, "flask-boom-1", "ValueError: no value for apple")
    text = record["message"]
    assert text.startswith("[")  # Flask's own log line heads it
    assert "Exception on /boom/apple [GET]\nTraceback (most recent call last):\n" in text
    assert "KeyError: 'apple'" in text
    assert "The above exception was the direct cause of the following exception:" in text
    assert text.endswith("ValueError: no value for apple")
    assert (record["stream"], record["level"], record["app"]) == ("stderr", "warn", "flaskboom")
    assert tracebacks(shared, "apple") == [record]


@pytest_twisted.ensureDeferred
async def test_wsgi_app_that_raises_is_one_record_with_the_request_id(shared):
    assert await get(shared, "/wsgiboom@1/raise/pear", "wsgi-raise-1") == 500
    [record] = await output_of(shared, "wsgi-raise-1", "RuntimeError: failed pear")
    text = record["message"]
    assert text.startswith("Request ") and "failed: RuntimeError: failed pear\n" in text
    assert "KeyError: 'pear'" in text
    assert "The above exception was the direct cause of the following exception:" in text
    assert text.endswith("RuntimeError: failed pear")
    assert tracebacks(shared, "pear") == [record]


@pytest_twisted.ensureDeferred
async def test_asgi_print_exc_is_one_record_with_the_request_id(shared):
    assert await get(shared, "/asgiboom@1/alone/plum", "asgi-alone-1") == 200
    records = await output_of(shared, "asgi-alone-1", "RuntimeError: failed plum")
    handling, record = records
    assert handling["message"] == "handling plum"
    text = record["message"]
    assert text.startswith("Traceback (most recent call last):\n")
    assert "During handling of the above exception, another exception occurred:" in text
    assert text.endswith("RuntimeError: failed plum")
    assert record["stream"] == "stderr"


@pytest.mark.parametrize("app", ["wsgiboom", "asgiboom"])
@pytest_twisted.ensureDeferred
async def test_concurrent_requests_in_one_worker_get_their_own_ids(shared, app):
    """Two requests print their tracebacks at once: two records, each with its own id."""
    markers = (f"fig{app}", f"kiwi{app}")
    codes = await gatherResults(
        [
            Deferred.fromCoroutine(get(shared, f"/{app}@1/together/{marker}", f"id-{marker}"))
            for marker in markers
        ]
    )
    assert codes == [200, 200]
    for marker, other in (markers, markers[::-1]):
        records = await output_of(shared, f"id-{marker}", f"RuntimeError: failed {marker}")
        [record] = [r for r in records if "Traceback" in r["message"]]
        assert record["message"].endswith(f"RuntimeError: failed {marker}")
        assert other not in record["message"]
        assert tracebacks(shared, marker) == [record]
    ids = {f"id-{marker}" for marker in markers}
    pids = {
        r["pid"] for r in shared.messages("buntime:worker:output") if r.get("request_id") in ids
    }
    assert len(pids) == 1, "one worker served both"


@pytest_twisted.ensureDeferred
async def test_a_failed_request_is_one_eliot_tree(shared):
    """
    What a worker says of a request (its output, the traceback, the failure)
    sits in the request's eliot task: eliot-tree renders the production log
    of the request as one tree.
    """
    assert await get(shared, "/wsgiboom@1/raise/quince", "tree-1") == 500
    await output_of(shared, "tree-1", "RuntimeError: failed quince")
    end = await shared.wait_for_log(
        lambda line: (
            line.get("action_type") == "buntime:http:request"
            and line.get("request_id") == "tree-1"
            and line.get("action_status") == "succeeded"
        )
    )
    task = end["task_uuid"]
    messages = [line for line in shared.lines if line.get("task_uuid") == task]
    kinds = [line.get("message_type") or line.get("action_type") for line in messages]
    assert {
        "buntime:http:request",
        "buntime:worker:output",
        "buntime:worker:request-error",
    } <= set(kinds)
    out = io.StringIO()
    render_tasks(out.write, tasks_from_iterable(messages))
    tree = out.getvalue()
    assert tree.startswith(f"{task}\n└── buntime:http:request/1 ⇒ started")
    assert re.findall(r"^\S+$", tree, re.MULTILINE) == [task]  # one tree: one root
    assert "buntime:worker:request-error/" in tree and "RuntimeError: failed quince" in tree
    assert "⇒ succeeded" in tree
    assert "formatting exception" not in tree
