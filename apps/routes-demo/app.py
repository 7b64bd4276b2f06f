"""
A buntime app without a framework: a module-level ``routes`` dict and a
``fetch`` fallback.  Handlers get a ``buntime.http.Request`` (plus the path
parameters, if they take a second argument) and return a ``Response``,
``str``, ``bytes``, or a ``dict``/``list`` for JSON.
"""

import asyncio

from buntime.http import Response


def hello(request):
    print(f"hello from routes-demo ({request.method} {request.url})")  # goes to the runtime's log
    return "Hello from buntime!"


def item(request, params):
    return {"id": params["id"], "query": request.query}


def echo(request):
    """POST any body: it comes back as it was sent."""
    return Response(200, {"content-type": "application/octet-stream"}, request.body)


def generate(request, params):
    """GET /bytes/1000: that many bytes of a repeating pattern."""
    size = int(params["size"])
    pattern = bytes(range(256))
    return pattern * (size // 256) + pattern[: size % 256]


async def slow(request):
    await asyncio.sleep(float(request.query.partition("=")[2] or 0.05))
    return {"slept": True}


routes = {
    "/": hello,
    "/health": {"ok": True},
    "/items/:id": item,
    "/echo": {"POST": echo},
    "/bytes/:size": generate,
    "/slow": slow,
}


def fetch(request):
    """Everything the routes above do not match."""
    return Response.error(404, "NOT_FOUND", f"nothing at {request.path}")


def on_idle():
    print("routes-demo is idle")


def on_terminate():
    print("routes-demo is stopping")
