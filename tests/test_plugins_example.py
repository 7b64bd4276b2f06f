"""The example plugin in plugins/hello-plugin/ (the one docs/plugins.md walks through)."""

from __future__ import annotations

import glob
import json
import os
import re

import pytest
import pytest_twisted
import yaml
from test_plugins_service import make_service

from buntime.http import AppInfo, Request, Response

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins")
NAME = "@example/hello-plugin"


@pytest.fixture
async def service(eliot_logger):
    service = make_service(EXAMPLES)
    service.startService()
    await service.when_loaded()
    yield service
    await service.stopService()


async def loaded(environ=None):
    service = make_service(EXAMPLES, environ=environ or {})
    service.startService()
    await service.when_loaded()
    return service


@pytest_twisted.ensureDeferred
async def test_loads_from_the_plugins_dir(eliot_logger):
    service = await loaded()
    assert service.failed is None
    [plugin] = service.registry.plugins
    assert (plugin.name, plugin.base) == (NAME, "/hello")
    assert service.registry.services.get("hello") is plugin.provider
    assert service.registry.menus() == [{"title": "Hello", "icon": "hand", "path": "/hello"}]
    [ready] = [m for m in eliot_logger.messages if m.get("message") == "Hello plugin ready"]
    assert (ready["context"], ready["greeting"]) == ("plugin:hello-plugin", "Hello")
    await service.stopService()
    assert any(m.get("message") == "Hello plugin stopped" for m in eliot_logger.messages)


@pytest_twisted.ensureDeferred
async def test_routes(eliot_logger):
    service = await loaded()
    response = await service.registry.route(Request("GET", "/hello/api/greet/ada"))
    assert json.loads(response.body) == {"message": "Hello, ada!"}
    stats = await service.registry.route(Request("GET", "/hello/api/stats"))
    assert json.loads(stats.body) == {"seen": 0}
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_greeting_from_the_environment(eliot_logger):
    service = await loaded({"HELLO_GREETING": "Olá"})
    response = await service.registry.route(Request("GET", "/hello/api/greet/ada"))
    assert json.loads(response.body) == {"message": "Olá, ada!"}
    assert service.registry.services.get("hello").greet("bob") == "Olá, bob!"
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_hooks(eliot_logger):
    service = await loaded()
    registry = service.registry
    app = AppInfo("todos", "1.0.0", "/apps/todos", {})
    request = await registry.on_request(Request("GET", "/todos/"), app, "/")
    assert request.headers.get("x-hello-greeting") == "Hello"
    blocked = await registry.on_request(
        Request("GET", "/todos/", {"x-hello-block": "yes"}), app, "/"
    )
    assert (blocked.status, json.loads(blocked.body)["error"]["code"]) == (403, "BLOCKED")
    response = await registry.on_response(Response.text("hi"), app)
    assert response.headers.get("x-hello-seen") == "1"
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_greetings_are_public(eliot_logger):
    service = await loaded()
    request = Request("GET", "/hello/api/greet/ada", {"x-hello-block": "yes"})
    assert await service.registry.on_request(request, None, None) is request
    stats = Request("GET", "/hello/api/stats", {"x-hello-block": "yes"})
    assert (await service.registry.on_request(stats, None, None)).status == 403
    await service.stopService()


def test_the_packaging_example_in_the_docs_collides_with_no_bundled_plugin():
    root = os.path.dirname(EXAMPLES)
    with open(os.path.join(root, "docs", "plugins.md")) as docs:
        text = docs.read()
    section = text[text.index("## Packaging a plugin") :]
    [name] = re.findall(r'"name": "([^"]+)"', section)
    [base] = re.findall(r'"base": "([^"]+)"', section)
    bundled = glob.glob(os.path.join(root, "plugins", "*", "manifest.yaml"))
    bundled += glob.glob(os.path.join(root, "buntime", "builtins", "*", "manifest.yaml"))
    assert bundled
    for path in bundled:
        with open(path) as file:
            manifest = yaml.safe_load(file)
        assert base != manifest.get("base"), f"{path} has the docs example's base {base}"
        assert name != manifest["name"]
