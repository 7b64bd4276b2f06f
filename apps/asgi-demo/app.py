"""
A Starlette app served by buntime: any ASGI callable named ``app`` works.
The lifespan runs before the first request; ``/events`` is a Server-Sent
Events stream that reaches the client event by event.
"""

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"started": True}  # becomes request.state for every request


async def index(request: Request):
    return JSONResponse(
        {
            "hello": "from Starlette",
            "root_path": request.scope["root_path"],
            "started": request.state.started,
        }
    )


async def events(request: Request):
    """GET /events?count=3&interval=0.5: one event every interval seconds."""
    count = int(request.query_params.get("count", 3))
    interval = float(request.query_params.get("interval", 0.5))

    async def stream():
        for number in range(1, count + 1):
            yield f"data: {number}\n\n"
            if number < count:
                await asyncio.sleep(interval)

    return StreamingResponse(stream(), media_type="text/event-stream")


app = Starlette(routes=[Route("/", index), Route("/events", events)], lifespan=lifespan)
