"""What the web side knows about the runtime's life: ready, stopping, in flight."""

from __future__ import annotations

from attrs import define
from twisted.internet.defer import Deferred, succeed

from buntime.once import Once


@define
class RuntimeState:
    """
    C{ready} is true once plugins are initialized and the port listens, and
    false again while stopping; C{in_flight} counts requests being answered.
    """

    started: bool = False
    stopping: bool = False
    in_flight: int = 0
    _drained: Once | None = None

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
        if self.in_flight == 0 and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.fire(None)

    def drained(self) -> Deferred[None]:
        """Fires once no request is in flight."""
        if self.in_flight == 0:
            return succeed(None)
        if self._drained is None:
            self._drained = Once()
        return self._drained.wait()
