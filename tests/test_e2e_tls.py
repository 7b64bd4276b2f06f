"""
C{--listen ssl:...} through a real runtime: a client that offers ALPN (as
browsers and curl do) gets HTTP/1.1 over TLS (and C{http/1.1} chosen over
ALPN where Twisted offers it), a C{Connection: close} answer closes the
connection, the C{Listening on} line says C{https://}, workers get an
C{https://} C{RUNTIME_API_URL}, and apps see their requests' scheme as
C{https}.
"""

from __future__ import annotations

import datetime
import socket
import ssl
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from e2e_apps import write_app
from twisted.internet import threads

from buntime.web.http1.factory import offers_alpn

pytestmark = pytest.mark.e2e

API_URL_APP = """
import os

routes = {"/": lambda request: os.environ["RUNTIME_API_URL"]}
"""

SCHEME_APP = """
def app(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    return [environ["wsgi.url_scheme"].encode()]
"""


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def get_over_tls(
    port: int, path: str, alpn: list[str], head: str | None = None
) -> tuple[str | None, bytes]:
    """
    The protocol ALPN chose and the whole response of a C{GET path}, as a
    browser asks (or of the request C{head}).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw) as tls:
            chosen = tls.selected_alpn_protocol()
            if head is None:
                head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            tls.sendall(head.encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    return chosen, b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_an_ssl_listener_serves_clients_that_offer_alpn(runtimes, tmp_path):
    key, cert = self_signed(tmp_path)
    apps = tmp_path / "apps"
    write_app(apps, "env", layout="simple", files={"app.py": API_URL_APP})
    write_app(apps, "scheme", layout="simple", files={"app.py": SCHEME_APP})
    proc = await runtimes.start(
        worker_dirs=[str(apps)],
        listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        wait_ready=False,
    )
    await proc.wait_for_message("buntime:runtime:ready")
    [listening] = proc.messages("buntime:web:listening")
    assert listening["message"] == f"Listening on https://127.0.0.1:{proc.port}"

    for alpn in (["h2", "http/1.1"], []):  # a browser, curl; a client without ALPN
        chosen, response = await threads.deferToThread(get_over_tls, proc.port, "/env/", alpn)
        assert chosen == ("http/1.1" if alpn and offers_alpn() else None)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), response
        assert body == f"https://127.0.0.1:{proc.port}".encode()

    # the app learns that its request came over TLS (as under gunicorn's TLS listener)
    _, response = await threads.deferToThread(get_over_tls, proc.port, "/scheme/", [])
    assert response.endswith(b"\r\n\r\nhttps"), response

    # a refused request: answered, and the connection closed without an error
    # (TLS cannot half-close as TCP does while the client's rest is read)
    refused = "POST /env/ HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999\r\n\r\n" + "x" * 70000
    _, response = await threads.deferToThread(get_over_tls, proc.port, "/", [], refused)
    assert response.startswith(b"HTTP/1.1 413 "), response
    await threads.deferToThread(get_over_tls, proc.port, "/env/", [])  # a turn later
    errors = [m for m in proc.messages("twisted:log") if m.get("level") == "error"]
    assert errors == []
