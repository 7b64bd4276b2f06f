"""
One request as the worker receives it from the runtime, and the bits of it
every adapter needs (path, query, client, server, scheme).
"""

from __future__ import annotations

from attrs import frozen

from buntime.pool.child.body import BodyReader
from buntime.pool.child.websocket import SocketInbox


def split_host(value: str, default_port: int) -> tuple[str, int]:
    """C{"example.com:8080"}, C{"[::1]:80"} or C{"example.com"} as C{(host, port)}."""
    host, port = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end != -1:
            host, port = value[1:end], value[end + 1 :].lstrip(":")
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        return host, default_port


@frozen
class IncomingRequest:
    """
    A request from the runtime.  C{target} is the path inside the app with
    its query string (the app's C{base} already stripped); C{headers} are
    C{[name, value]} pairs as sent; C{remote} is the client address
    (C{"ip"}, C{"ip:port"} or C{"[ipv6]:port"}, possibly empty), C{local}
    the address the runtime accepted the connection on (the same forms, or
    empty), C{http_version} the client's (C{"1.1"} or C{"1.0"}); C{socket}
    is set for a WebSocket upgrade, and holds what the client sends once the
    app accepts it.
    """

    method: str
    target: str
    base: str
    headers: list[list[str]]
    body: BodyReader
    remote: str = ""
    socket: SocketInbox | None = None
    local: str = ""
    http_version: str = "1.1"

    @property
    def path(self) -> str:
        """The path, still percent-encoded, without the query string (C{/} at least)."""
        return self.target.partition("?")[0] or "/"

    @property
    def query(self) -> str:
        """The raw query string, without the C{?}."""
        return self.target.partition("?")[2]

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header C{name} (case-insensitive)."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    @property
    def scheme(self) -> str:
        """C{https} when the runtime says so in C{x-forwarded-proto}, else C{http}."""
        forwarded = (self.header("x-forwarded-proto") or "").split(",")[0].strip().lower()
        return "https" if forwarded == "https" else "http"

    @property
    def server(self) -> tuple[str, int]:
        """
        Server name and port (WSGI's C{SERVER_NAME} and C{SERVER_PORT}): from
        the C{Host} header, as gunicorn has them; without one, the address
        the connection came in on (PEP 3333).
        """
        default_port = 443 if self.scheme == "https" else 80
        host = self.header("host")
        if host:
            return split_host(host, default_port)
        return self.local_addr or ("localhost", default_port)

    @property
    def local_addr(self) -> tuple[str, int] | None:
        """The address and port the runtime accepted the connection on (C{None}: unknown)."""
        return _address(self.local)

    @property
    def client(self) -> tuple[str, int] | None:
        """Client address and port (0 when unknown), or C{None} without a remote address."""
        return _address(self.remote)


def _address(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    if value.startswith("[") or value.count(":") == 1:
        return split_host(value, 0)
    return value, 0
