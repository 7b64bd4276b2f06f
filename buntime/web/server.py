"""The listening side: an endpoint, the connection factory, and a drain on stop."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from buntime.logs import log
from buntime.web.http1 import HTTP1Factory
from buntime.web.state import RuntimeState


def scheme(description: str) -> str:
    """The URL scheme of an endpoint string: C{https} for C{ssl:}, else C{http}."""
    return "https" if description.split(":", 1)[0].lower() == "ssl" else "http"


def _in_use(error: CannotListenError) -> bool:
    """Whether listening failed because another socket holds the address."""
    cause = error.socketError
    return getattr(cause, "errno", None) == errno.EADDRINUSE or "in use" in str(cause)


def _another_port(description: str, taken: object, other: int) -> str:
    """
    How to listen on port C{other} instead of C{taken}, keeping the rest of
    C{description} (an C{interface=127.0.0.1} must not become all interfaces).
    """
    if description == f"tcp:{taken}":
        return f"PORT={other} (or --port {other}, or --listen tcp:{other})"
    kind, _, rest = description.partition(":")
    first, sep, tail = rest.partition(":")
    if first in (str(taken), f"port={taken}"):
        changed = f"{kind}:{first.replace(str(taken), str(other))}{sep}{tail}"
        return f"RUNTIME_LISTEN={changed} (or --listen {changed})"
    return "RUNTIME_LISTEN (or --listen)"


@define(eq=False)
class WebService(Service):
    """
    Listens on C{description} (a Twisted endpoint string).  On stop, it stops
    accepting connections and waits for in-flight requests to finish.
    C{site} builds the connections (L{buntime.web.http1.HTTP1Factory}).
    C{listening} fires with the port once it listens; C{fatal} is called
    with a one-line reason when it cannot.
    """

    reactor: Any
    description: str
    site: HTTP1Factory
    state: RuntimeState
    fatal: Callable[[str], None]
    listening: Deferred[IListeningPort] = field(factory=Deferred)
    port: IListeningPort | None = None
    wait_for: Callable[[], Deferred[Any]] | None = None

    def startService(self) -> None:
        Service.startService(self)
        if self.wait_for is None:
            self._listen()
        else:
            self.wait_for().addCallback(lambda _: self._listen() if self.running else None)

    def _listen(self) -> None:
        try:
            endpoint = serverFromString(self.reactor, self.description)
        except (ValueError, TypeError, KeyError) as error:
            self.fatal(f"Invalid listen description {self.description!r}: {error}")
            return
        endpoint.listen(self.site).addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        if isinstance(address, (IPv4Address, IPv6Address)):
            log(
                "info",
                "buntime:web:listening",
                f"Listening on {scheme(self.description)}://{address.host}:{address.port}",
                host=address.host,
                port=address.port,
            )
        else:  # a UNIX socket (unix:...): no host or port
            log("info", "buntime:web:listening", f"Listening on {address}", address=str(address))
        self.listening.callback(port)

    def _failed(self, failure: Any) -> None:
        reason = f"Cannot listen on {self.description}: {failure.getErrorMessage()}"
        if isinstance(failure.value, CannotListenError) and _in_use(failure.value):
            taken = failure.value.port
            other = taken + 1 if isinstance(taken, int) and 0 < taken < 65535 else 8001
            reason += (
                "; another process holds that port: stop it, or choose another port"
                f" with {_another_port(self.description, taken, other)}"
            )
        self.fatal(reason)

    async def _stop(self) -> None:
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)  # may return None
        if self.state.in_flight:
            log(
                "info",
                "buntime:web:draining",
                f"Waiting for {self.state.in_flight} in-flight request(s)",
                in_flight=self.state.in_flight,
            )
        await self.state.drained()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())
