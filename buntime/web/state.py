"""What the web side knows about the runtime's life: ready, stopping, in flight."""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred, succeed


@define
class RuntimeState:
    """
    C{ready} is true once plugins are initialized and the port listens, and
    false again while stopping; C{in_flight} counts requests being answered.
    """

    started: bool = False
    stopping: bool = False
    in_flight: int = 0
    _drained: list[Deferred[None]] = field(factory=list)

    @property
    def ready(self) -> bool:
        return self.started and not self.stopping

    @property
    def status(self) -> str:
        if self.stopping:
            return "stopping"
        return "ready" if self.started else "starting"

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            waiters, self._drained = self._drained, []
            for waiter in waiters:
                waiter.callback(None)

    def drained(self) -> Deferred[None]:
        """Fires once no request is in flight."""
        if self.in_flight == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drained.append(waiter)
        return waiter
