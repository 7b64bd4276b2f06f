"""The listening side: URL schemes, and what a port already in use says."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.protocol import Factory

from buntime.web.server import WebService, _another_port, scheme
from buntime.web.state import RuntimeState
from buntime.wiring import _api_url, report_empty


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


class FakeUnixPort:
    def getHost(self):
        return UNIXAddress(b"/run/buntime/b.sock")


def test_workers_of_a_unix_socket_get_an_http_unix_url():
    """requests-unixsocket's (and docker's) form: the socket's path percent-encoded."""
    assert _api_url(FakeUnixPort()) == "http+unix://%2Frun%2Fbuntime%2Fb.sock"


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
    other = port + 1  # the next port, not a fixed one that may be the taken one
    changed = f"tcp:{other}:interface=127.0.0.1"  # not all interfaces, as PORT would be
    assert reason.endswith(
        "; another process holds that port: stop it, or choose another port"
        f" with RUNTIME_LISTEN={changed} (or --listen {changed})"
    )


@pytest.mark.parametrize(
    ("description", "changed"),
    [
        ("tcp6:8000:interface=\\:\\:1", "tcp6:8001:interface=\\:\\:1"),
        ("tcp:port=8000:interface=127.0.0.1", "tcp:port=8001:interface=127.0.0.1"),
    ],
)
def test_the_other_port_keeps_the_rest_of_the_description(description, changed):
    how = f"RUNTIME_LISTEN={changed} (or --listen {changed})"
    assert _another_port(description, 8000, 8001) == how


def test_the_other_port_of_a_plain_port_or_an_unknown_description():
    assert _another_port("tcp:8000", 8000, 8001) == (
        "PORT=8001 (or --port 8001, or --listen tcp:8001)"
    )
    assert _another_port("systemd:domain=INET:index=0", 8000, 8001) == (
        "RUNTIME_LISTEN (or --listen)"
    )


class FakeListeningPort:
    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 8443)


def test_an_ssl_endpoint_is_logged_as_https(eliot_logger):
    web = WebService(
        reactor=reactor,
        description="ssl:8443:privateKey=key.pem",
        site=Factory(),
        state=RuntimeState(),
        fatal=lambda reason: None,
    )
    web._listened(FakeListeningPort())
    [line] = [m for m in eliot_logger.messages if m["message_type"] == "buntime:web:listening"]
    assert line["message"] == "Listening on https://127.0.0.1:8443"


def test_an_app_directory_without_apps_is_reported_at_info(eliot_logger, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full" / "site").mkdir(parents=True)
    (tmp_path / "full" / "site" / "manifest.yaml").write_text("")
    report_empty([str(tmp_path / "empty"), str(tmp_path / "full")])
    lines = [m for m in eliot_logger.messages if m["message_type"] == "buntime:apps:empty-dir"]
    assert [(m["level"], m["message"]) for m in lines] == [
        ("info", f"No apps in {tmp_path / 'empty'} yet")
    ]
