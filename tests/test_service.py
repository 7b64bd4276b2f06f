"""
The service tree (SPEC §1 shutdown): readiness, children stopped one after
the other in reverse order, in-flight requests drained, and the 30 s cap.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from buntime.http import Request, Response
from buntime.logs.service import LoggingService
from buntime.service import SHUTDOWN_CAP, RuntimeService
from buntime.web.api.core import CoreAPI
from buntime.web.frontdoor import FrontDoor
from buntime.web.http1 import HTTP1Factory, Limits
from buntime.web.server import WebService
from buntime.web.state import RuntimeState


@define(eq=False)
class Child(Service):
    """A child service whose stop takes as long as the test says."""

    label: str
    journal: list[str]
    stopping: Deferred[None] | None = None
    fail: bool = False
    _stopped: list[Deferred[None]] = field(factory=list)

    def startService(self) -> None:
        Service.startService(self)
        self.journal.append(f"start {self.label}")

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self.journal.append(f"stop {self.label}")
        if self.fail:
            raise RuntimeError(f"{self.label} cannot stop")
        return self.stopping if self.stopping is not None else succeed(None)


def make_web(reactor: Any, state: RuntimeState, fatal: Any = None) -> WebService:
    api = CoreAPI(state=state)
    door = FrontDoor(clock=reactor, state=state, api=api)
    web = WebService(
        reactor=reactor,
        description="tcp:0:interface=127.0.0.1",
        site=HTTP1Factory(door, reactor, Limits(), state),
        state=state,
        fatal=fatal or (lambda reason: pytest.fail(reason)),
    )
    web.setName("web")
    return web


@define
class Tree:
    reactor: MemoryReactorClock
    state: RuntimeState
    runtime: RuntimeService
    journal: list[str]
    exits: list[int]
    children: dict[str, Child]


def make_tree(*labels: str, **stops: Deferred[None]) -> Tree:
    """A runtime with the children C{labels} and then the web service."""
    reactor = MemoryReactorClock()
    state = RuntimeState()
    journal: list[str] = []
    exits: list[int] = []
    web = make_web(reactor, state)
    runtime = RuntimeService(reactor=reactor, state=state, web=web, exit=exits.append)
    children = {}
    for label in labels:
        child = Child(label, journal, stopping=stops.get(label))
        child.setName(label)
        child.setServiceParent(runtime)
        children[label] = child
    web.setServiceParent(runtime)
    return Tree(reactor, state, runtime, journal, exits, children)


# -- start and readiness --------------------------------------------------------------


def test_ready_once_started_and_listening(eliot_logger):
    tree = make_tree("logging", "pool")
    assert not tree.state.ready
    tree.runtime.startService()
    assert tree.journal == ["start logging", "start pool"]
    assert len(tree.reactor.tcpServers) == 1
    port, _, _, interface = tree.reactor.tcpServers[0]
    assert (port, interface) == (0, "127.0.0.1")
    assert tree.state.ready
    assert tree.state.status == "ready"
    [ready] = [m for m in eliot_logger.messages if m.get("message_type") == "buntime:runtime:ready"]
    assert ready["level"] == "info"


def test_on_serving_hooks_run_before_ready(eliot_logger):
    tree = make_tree()
    hook: Deferred[None] = Deferred()
    tree.runtime.on_serving.append(lambda: hook)
    tree.runtime.startService()
    assert not tree.state.ready
    hook.callback(None)
    assert tree.state.ready


def test_not_ready_while_stopping(eliot_logger):
    tree = make_tree()
    tree.runtime.startService()
    tree.runtime.stopService()
    assert not tree.state.ready
    assert tree.state.status == "stopping"


def test_web_service_reports_a_bad_description_in_one_line():
    reasons: list[str] = []
    state = RuntimeState()
    web = make_web(MemoryReactorClock(), state, fatal=reasons.append)
    web.description = "bogus:1"
    web.startService()
    assert len(reasons) == 1
    assert reasons[0].startswith("Invalid listen description 'bogus:1'")
    assert "\n" not in reasons[0]


# -- stop ---------------------------------------------------------------------------------


def test_children_stop_one_after_the_other_in_reverse(eliot_logger):
    logging_stop: Deferred[None] = Deferred()
    pool_stop: Deferred[None] = Deferred()
    tree = make_tree("logging", "pool", "plugins", logging=logging_stop, pool=pool_stop)
    tree.runtime.startService()
    tree.journal.clear()

    stopped = tree.runtime.stopService()
    # web (no request in flight) and plugins stop at once; pool is still stopping
    assert tree.journal == ["stop plugins", "stop pool"]
    assert not stopped.called
    pool_stop.callback(None)
    assert tree.journal == ["stop plugins", "stop pool", "stop logging"]
    assert not stopped.called
    logging_stop.callback(None)
    assert stopped.called
    assert tree.exits == []
    assert not tree.reactor.getDelayedCalls()  # the cap is cancelled


def test_a_child_that_fails_to_stop_does_not_stop_the_others(eliot_logger):
    tree = make_tree("logging", "pool")
    tree.children["pool"].fail = True
    tree.runtime.startService()
    stopped = tree.runtime.stopService()
    assert stopped.called
    assert tree.journal[-2:] == ["stop pool", "stop logging"]
    [failed] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:runtime:stop-failed"
    ]
    assert "pool cannot stop" in failed["message"]
    assert failed["level"] == "error"


def test_stop_waits_for_in_flight_requests(eliot_logger):
    tree = make_tree("logging")
    tree.runtime.startService()
    tree.state.request_started()
    tree.state.request_started()
    tree.journal.clear()

    stopped = tree.runtime.stopService()
    assert not stopped.called
    assert tree.journal == []  # logging waits for the web service to drain
    tree.state.request_finished()
    assert not stopped.called
    tree.state.request_finished()
    assert tree.journal == ["stop logging"]
    assert stopped.called
    [draining] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:web:draining"
    ]
    assert draining["in_flight"] == 2


def test_the_30s_cap_forces_exit_1(eliot_logger):
    never: Deferred[None] = Deferred()
    tree = make_tree("logging", "pool", pool=never)
    tree.runtime.startService()
    tree.runtime.stopService()
    tree.reactor.advance(SHUTDOWN_CAP - 0.001)
    assert tree.exits == []
    tree.reactor.advance(0.001)
    assert tree.exits == [1]
    assert SHUTDOWN_CAP == 30.0
    [timeout] = [
        m
        for m in eliot_logger.messages
        if m.get("message_type") == "buntime:runtime:shutdown-timeout"
    ]
    assert timeout["level"] == "error"


def test_a_stop_is_not_ready_at_once_but_serves_through_the_drain_delay(eliot_logger):
    """Kubernetes' order: readiness 503 first, the port open a while, then the drain."""
    tree = make_tree("pool")
    tree.runtime.drain_delay = 5.0
    tree.runtime.startService()
    web = tree.runtime.web
    stopped = tree.runtime.stopService()
    assert not tree.state.ready and tree.state.status == "stopping"
    tree.reactor.advance(4.9)
    assert web.running  # its port still open: accepting and serving
    assert tree.journal == ["start pool"]
    tree.reactor.advance(0.1)
    assert not web.running  # listening no more
    assert tree.journal == ["start pool", "stop pool"]
    assert stopped.called and tree.exits == []
    [draining] = [
        m for m in eliot_logger.messages if m.get("message_type") == "buntime:runtime:draining"
    ]
    assert draining["drain_delay"] == 5.0


def test_on_stopping_hooks_run_when_the_drain_begins(eliot_logger):
    """Plugins' C{ctx.when_stopping()}: after the drain delay, before any child stops."""
    tree = make_tree("pool")
    tree.runtime.drain_delay = 5.0
    tree.runtime.on_stopping.append(lambda: tree.journal.append("stopping"))
    tree.runtime.startService()
    tree.runtime.stopService()
    tree.reactor.advance(4.9)
    assert tree.journal == ["start pool"]
    tree.reactor.advance(0.1)
    assert tree.journal == ["start pool", "stopping", "stop pool"]


def test_the_shutdown_timeout_counts_from_the_end_of_the_drain(eliot_logger):
    never: Deferred[None] = Deferred()
    tree = make_tree("pool", pool=never)
    tree.runtime.drain_delay, tree.runtime.shutdown_timeout = 2.0, 10.0
    tree.runtime.startService()
    tree.runtime.stopService()
    tree.reactor.advance(2)  # the drain
    tree.reactor.advance(10 - 0.001)
    assert tree.exits == []
    tree.reactor.advance(0.001)
    assert tree.exits == [1]


def test_a_stop_within_the_cap_does_not_exit(eliot_logger):
    slow: Deferred[None] = Deferred()
    tree = make_tree("pool", pool=slow)
    tree.runtime.startService()
    stopped = tree.runtime.stopService()
    tree.reactor.advance(29)
    slow.callback(None)
    assert stopped.called
    tree.reactor.advance(60)
    assert tree.exits == []


def test_the_cap_uses_the_given_clock():
    clock = Clock()
    state = RuntimeState()
    exits: list[int] = []
    runtime = RuntimeService(
        reactor=clock, state=state, web=make_web(MemoryReactorClock(), state), exit=exits.append
    )
    never: Deferred[None] = Deferred()
    child = Child("stuck", [], stopping=never)
    child.setServiceParent(runtime)
    runtime.stopService()
    clock.advance(30)
    assert exits == [1]


# -- a real port: stop listening, finish what is in flight ----------------------------------


class _Probe(Protocol):
    pass


async def can_connect(reactor: Any, port: int) -> bool:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    try:
        protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Probe())
    except ConnectionRefusedError:
        return False
    protocol.transport.loseConnection()
    return True


@pytest_twisted.ensureDeferred
async def test_shutdown_stops_listening_and_finishes_the_in_flight_request(eliot_logger):
    import treq
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    gate: Deferred[None] = Deferred()
    arrived: Deferred[None] = Deferred()

    async def slow(request: Request, fields: dict) -> Response | None:
        arrived.callback(None)
        await gate
        return Response.text("finished after stop")

    state = RuntimeState()
    door = FrontDoor(clock=reactor, state=state, api=CoreAPI(state=state), steps=[slow])
    web = WebService(
        reactor=reactor,
        description="tcp:0:interface=127.0.0.1",
        site=HTTP1Factory(door, reactor, Limits(), state),
        state=state,
        fatal=lambda reason: pytest.fail(reason),
    )
    exits: list[int] = []
    runtime = RuntimeService(reactor=reactor, state=state, web=web, exit=exits.append)
    web.setServiceParent(runtime)
    runtime.startService()
    await web.listening
    assert web.port is not None
    port = web.port.getHost().port
    client = treq.client.HTTPClient(
        Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    )
    try:
        in_flight = client.get(f"http://127.0.0.1:{port}/slow")
        await arrived
        stopped = runtime.stopService()
        assert not state.ready
        assert not await can_connect(reactor, port)
        assert not stopped.called

        gate.callback(None)
        response = await in_flight
        assert response.code == 200
        assert await response.text() == "finished after stop"
        await stopped
        assert state.in_flight == 0
        assert exits == []
    finally:
        if not gate.called:
            gate.callback(None)


def test_a_signal_stops_gracefully_and_a_second_one_leaves_at_once(eliot_logger):
    tree = make_tree("pool")
    tree.runtime.startService()
    tree.runtime._stop_on_signal("SIGTERM")
    assert tree.reactor.hasStopped  # the reactor stops: the services stop, drain included
    assert tree.exits == []
    tree.runtime._stop_on_signal("SIGINT")
    assert tree.exits == [1]
    names = [m.get("message_type") for m in eliot_logger.messages]
    assert "buntime:runtime:signal" in names and "buntime:runtime:signal-again" in names


@pytest.mark.parametrize("how", ["cap", "second signal"])
def test_a_forced_exit_leaves_its_reason_in_the_log_file(tmp_path: Path, how: str) -> None:
    """
    The log file is written once a second: a runtime leaving at once (the
    30 s cap, a second signal) first writes what waits, its reason last.
    """
    reactor = MemoryReactorClock()
    state = RuntimeState()
    exits: list[int] = []
    path = tmp_path / "buntime.log"
    runtime = RuntimeService(
        reactor=reactor, state=state, web=make_web(reactor, state), exit=exits.append
    )
    logging = LoggingService(clock=reactor, file_path=str(path), stream=io.StringIO())
    logging.setName("logging")
    logging.setServiceParent(runtime)
    pool = Child("pool", [], stopping=Deferred())
    pool.setName("pool")
    pool.setServiceParent(runtime)
    runtime.web.setServiceParent(runtime)
    runtime.startService()
    try:
        if how == "cap":
            runtime.stopService()
            reactor.advance(SHUTDOWN_CAP)
            reason = "buntime:runtime:shutdown-timeout"
        else:
            runtime._stop_on_signal("SIGTERM")
            runtime._stop_on_signal("SIGTERM")
            reason = "buntime:runtime:signal-again"
        assert exits == [1]
        written = [json.loads(line) for line in path.read_text().splitlines()]
        assert written[-1]["message_type"] == reason
    finally:
        logging.stopService()
