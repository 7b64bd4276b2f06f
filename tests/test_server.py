"""The listening side: URL schemes, and what a port already in use says."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory

from buntime.service import _api_url
from buntime.web.server import WebService, scheme
from buntime.web.state import RuntimeState


def test_scheme_follows_the_endpoint():
    assert scheme("tcp:8000") == "http"
    assert scheme("ssl:8443:privateKey=key.pem:certKey=cert.pem") == "https"
    assert scheme("unix:/run/buntime.sock") == "http"


class FakePort:
    def getHost(self):
        return IPv4Address("TCP", "0.0.0.0", 8443)


def test_workers_get_the_api_url_with_the_endpoint_s_scheme():
    assert _api_url(FakePort(), scheme("ssl:8443")) == "https://127.0.0.1:8443"
    assert _api_url(FakePort()) == "http://127.0.0.1:8443"


def test_a_port_in_use_says_how_to_pick_another():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    reasons: list[str] = []
    web = WebService(
        reactor=reactor,
        description=f"tcp:{port}:interface=127.0.0.1",
        site=Factory(),
        state=RuntimeState(),
        fatal=reasons.append,
    )
    try:
        web._listen()  # a TCP listen fails at once
    finally:
        taken.close()
    [reason] = reasons
    assert reason.startswith(f"Cannot listen on tcp:{port}:interface=127.0.0.1: ")
    assert reason.endswith(
        "; another process holds that port: stop it, or choose another port"
        " with PORT=8001 (or --port 8001, or --listen tcp:8001)"
    )
