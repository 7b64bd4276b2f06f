"""
Garbled requests against a real runtime over real sockets: seeded
mutations of well-formed heads, each followed by a well-formed probe that
closes the connection.  Each gets a clean answer or a clean close within
seconds (never a 500, never a traceback), the runtime logs no crash, and
it keeps serving.
"""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from e2e_apps import parse_reply, raw_request, static_app

pytestmark = pytest.mark.e2e

SEED = 18
COUNT = 60
PROBE = b"GET /api/health HTTP/1.1\r\nHost: rt\r\nConnection: close\r\n\r\n"
HEADS = [
    b"GET /api/health HTTP/1.1\r\nHost: rt\r\nAccept: */*\r\n\r\n",
    b"GET /site@%5E1.0.0/index.html?x=1 HTTP/1.1\r\nHost: rt\r\nCookie: a=b\r\n\r\n",
    b"GET /site@1.x/../site/ HTTP/1.1\r\nHost: rt\r\nx-request-id: abc\r\n\r\n",
    b"DELETE /api/apps/_/site/1.0.0 HTTP/1.1\r\nHost: rt\r\nOrigin: http://evil\r\n\r\n",
    b"GET /logs/api/?level=warn HTTP/1.1\r\nHost: rt\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
]
INSERTS = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"%", b"..", b"\xff", b"\\", b"@", b"\r\n\r\n"]


def garbled(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(HEADS))
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data))
        how = rng.choice(["flip", "insert", "delete"])
        if how == "flip":
            data[at] = rng.randrange(256)
        elif how == "insert":
            data[at:at] = rng.choice(INSERTS)
        else:
            del data[at : at + rng.randint(1, 6)]
    return bytes(data)


@pytest_twisted.ensureDeferred
async def test_garbled_heads_get_clean_answers_and_the_runtime_keeps_serving(runtimes, tmp_path):
    from twisted.internet import reactor

    apps = tmp_path / "apps"
    static_app(apps, "site", "1.0.0", "site one")
    proc = await runtimes.start(worker_dirs=[str(apps)])
    rng = random.Random(SEED)
    statuses: dict[int, int] = {}
    for _ in range(COUNT):
        reply = await raw_request(reactor, proc.port, garbled(rng) + PROBE, timeout=20)
        assert b"Traceback" not in reply
        if not reply:
            statuses[0] = statuses.get(0, 0) + 1
            continue
        status, _, _ = parse_reply(reply)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500 or status in (501, 505), reply[:300]
    for path in (b"/api/health", b"/logs/api/stats", b"/metrics/api/"):  # Host names Klein refused
        request = b"GET %s HTTP/1.1\r\nHost: ..rt\r\nConnection: close\r\n\r\n" % path
        status, _, _ = parse_reply(await raw_request(reactor, proc.port, request, timeout=20))
        assert status == 200, path
    assert (await proc.get("/api/health")).code == 200
    assert proc.messages("buntime:http:internal-error") == []
    assert statuses.get(0, 0) < COUNT  # most got an answer
