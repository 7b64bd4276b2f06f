"""The short path through AMP for no-answer commands (L{buntime.pool.wire})."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim

from buntime.http import Headers
from buntime.pool.commands import address, parse_request_head, request_head
from buntime.pool.events import parse_response_head, response_head, response_start
from buntime.pool.wire import FastAMP, fields_of, responder


class Note(amp.Command):
    arguments = [
        (b"rid", amp.Integer()),
        (b"text", amp.Unicode()),
        (b"data", amp.String()),
        (b"end", amp.Boolean()),
    ]
    requiresAnswer = False


class Ask(amp.Command):
    arguments = [(b"rid", amp.Integer())]
    response = [(b"rid", amp.Integer())]


class Listed(amp.Command):
    arguments = [(b"items", amp.ListOf(amp.Integer()))]
    requiresAnswer = False


class Fast(FastAMP):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[tuple] = []
        self.listed: list[list[int]] = []
        self.lost = False

    def connectionLost(self, reason: object) -> None:
        super().connectionLost(reason)
        self.lost = True

    @responder(Note)
    def note(self, rid: int, text: str, data: bytes, end: bool) -> None:
        if text == "boom":
            raise ValueError("boom")
        self.notes.append((rid, text, data, end))

    @Ask.responder
    def ask(self, rid: int) -> dict:
        return {"rid": rid + 1}

    @Listed.responder
    def got_listed(self, items: list[int]) -> dict:
        self.listed.append(items)
        return {}


class Plain(amp.AMP):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[tuple] = []

    @Note.responder
    def note(self, rid: int, text: str, data: bytes, end: bool) -> dict:
        self.notes.append((rid, text, data, end))
        return {}


def connect(server: amp.AMP, client: amp.AMP) -> iosim.IOPump:
    return iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True),
        client,
        iosim.FakeTransport(client, isServer=False),
    )


def sent_bytes(protocol: amp.AMP, **values: object) -> bytes:
    transport = iosim.FakeTransport(protocol, isServer=False)
    protocol.makeConnection(transport)
    protocol.callRemote(Note, **values)
    return b"".join(transport.stream)


def test_only_simple_no_answer_commands_take_the_short_path() -> None:
    assert fields_of(Note) is not None
    assert fields_of(Ask) is None
    assert fields_of(Listed) is None
    with pytest.raises(TypeError):
        responder(Ask)


def test_the_boxes_are_those_amp_sends() -> None:
    values = {"rid": 7, "text": "héllo", "data": b"\x00\xff", "end": True}
    assert sent_bytes(Fast(), **values) == sent_bytes(Plain(), **values)


def test_fast_and_plain_peers_understand_each_other() -> None:
    fast, plain = Fast(), Plain()
    pump = connect(fast, plain)
    fast.callRemote(Note, rid=1, text="to plain", data=b"a", end=False)
    plain.callRemote(Note, rid=2, text="to fast", data=b"", end=True)
    pump.flush()
    assert plain.notes == [(1, "to plain", b"a", False)]
    assert fast.notes == [(2, "to fast", b"", True)]


def test_other_commands_take_the_usual_route() -> None:
    fast, other = Fast(), Fast()
    pump = connect(fast, other)
    answered = other.callRemote(Ask, rid=1)
    other.callRemote(Listed, items=[1, 2])
    pump.flush()
    assert answered.result == {"rid": 2}
    assert fast.listed == [[1, 2]]


def test_wrong_arguments_fail_as_in_amp() -> None:
    with pytest.raises(amp.InvalidSignature):
        Fast().callRemote(Note, rid=1, text="x", data=b"", end=True, extra=1)


def test_a_failing_responder_drops_the_connection() -> None:
    fast, plain = Fast(), Plain()
    pump = connect(fast, plain)
    plain.callRemote(Note, rid=1, text="boom", data=b"", end=True)
    pump.flush()
    assert fast.lost and fast.notes == []


@pytest.mark.parametrize(
    ("field", "value"),
    [(b"end", b"maybe"), (b"rid", b"one"), (b"text", b"\xff"), (b"rid", b"")],
)
def test_a_value_its_argument_cannot_read_drops_the_connection(field, value) -> None:
    fast = Fast()
    fast.makeConnection(iosim.FakeTransport(fast, isServer=False))
    box = amp.AmpBox(_command=b"Note", rid=b"1", text=b"t", data=b"", end=b"True")
    box[field] = value
    fast.dataReceived(box.serialize())
    assert fast.notes == [] and fast.transport.disconnecting


def test_values_are_read_as_their_arguments_read_them() -> None:
    fast = Fast()
    fast.makeConnection(iosim.FakeTransport(fast, isServer=False))
    for end in (b"True", b"False"):
        box = amp.AmpBox(_command=b"Note", rid=b"-7", text="é".encode(), data=b"\x00", end=end)
        fast.dataReceived(box.serialize())
    assert fast.notes == [(-7, "é", b"\x00", True), (-7, "é", b"\x00", False)]


texts = st.text(max_size=30)
pairs = st.lists(st.tuples(texts, texts), max_size=5)


@given(texts, texts, texts, pairs, texts, st.booleans(), texts, st.sampled_from(["1.0", "1.1"]))
def test_request_heads_round_trip(
    method, path, base, headers, remote, more, local, version
) -> None:
    head = request_head(method, path, base, headers, remote, more, local, version)
    assert parse_request_head(head) == (
        method,
        path,
        base,
        [list(pair) for pair in headers],
        remote,
        more,
        local,
        version,
    )


def test_addresses() -> None:
    assert address("10.0.0.1", 4567) == "10.0.0.1:4567"
    assert address("::1", 80) == "[::1]:80"
    assert address("10.0.0.1", None) == "10.0.0.1"
    assert address(None, 80) == address("", None) == ""


@given(st.integers(min_value=100, max_value=999), pairs, st.booleans())
def test_response_heads_round_trip(status, headers, end) -> None:
    head = response_head(status, json.dumps(headers), end)
    assert parse_response_head(head) == (status, [list(pair) for pair in headers], end)


class Flushing(Fast):
    flush_every = 2


class Socket:
    """A socket that takes C{room} bytes, then would block."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if not self.room:
            raise BlockingIOError()
        taken = data[: self.room]
        self.room -= len(taken)
        self.sent.append(taken)
        return len(taken)


class SocketTransport(tcp.Connection):
    """What L{FastAMP} reads of a Twisted socket transport: its buffer and socket."""

    connected = True
    disconnecting = False

    def __init__(self, room: int = 1 << 20, waiting: bytes = b"") -> None:
        self.socket = Socket(room)
        self.dataBuffer = waiting
        self._tempDataLen = 0
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def getHandle(self) -> Any:
        return self.socket

    def getPeer(self) -> str:
        return "peer"

    def getHost(self) -> str:
        return "host"


def note(rid: int) -> bytes:
    box = amp.AmpBox(rid=str(rid).encode(), text=b"", data=b"", end=b"True")
    box[b"_command"] = b"Note"
    return box.serialize()


def timed(protocol: FastAMP, transport: Any) -> Clock:
    protocol.clock = clock = Clock()
    protocol.makeConnection(transport)
    return clock


def test_without_a_clock_every_box_goes_out_at_once_in_one_send() -> None:
    """A worker's side: no batching, and no write through Twisted's buffer when it is empty."""
    protocol, transport = Fast(), SocketTransport()
    protocol.makeConnection(transport)
    protocol.callRemote(Note, rid=1, text="", data=b"", end=True)
    protocol.callRemote(Note, rid=2, text="", data=b"", end=True)
    assert transport.socket.sent == [note(1), note(2)] and transport.written == []


def test_without_a_clock_a_box_waits_behind_what_the_transport_holds() -> None:
    protocol, transport = Fast(), SocketTransport(waiting=b"earlier")
    protocol.makeConnection(transport)
    protocol.callRemote(Note, rid=1, text="", data=b"", end=True)
    assert transport.written == [note(1)] and transport.socket.sent == []


def test_without_a_clock_a_box_that_asks_for_an_answer_goes_out_at_once_too() -> None:
    """A worker's C{Ready}: sent as it is made, not on the event loop's next turn."""
    protocol, transport = Fast(), SocketTransport()
    protocol.makeConnection(transport)
    protocol.callRemote(Ask, rid=7)
    [sent] = transport.socket.sent
    assert b"_ask" in sent and b"Ask" in sent and transport.written == []


def test_with_a_clock_a_box_that_asks_goes_through_the_transport_after_those_waiting() -> None:
    protocol, transport = Fast(), SocketTransport()
    clock = timed(protocol, transport)
    protocol.callRemote(Note, rid=1, text="", data=b"", end=True)
    protocol.callRemote(Ask, rid=7)
    assert transport.socket.sent == [note(1)]  # the waiting box first, in order
    [asked] = transport.written
    assert b"_ask" in asked
    clock.advance(0)


def test_boxes_wait_for_the_end_of_the_turn_and_go_out_in_one_send() -> None:
    protocol, transport = Fast(), SocketTransport()
    clock = timed(protocol, transport)
    for rid in range(3):
        protocol.callRemote(Note, rid=rid, text="", data=b"", end=True)
    assert transport.socket.sent == [] and transport.written == []
    clock.advance(0)
    assert transport.socket.sent == [note(0) + note(1) + note(2)]
    assert transport.written == [] and not clock.getDelayedCalls()


def test_every_few_boxes_go_out_at_once() -> None:
    protocol, transport = Flushing(), SocketTransport()
    clock = timed(protocol, transport)
    for rid in range(5):
        protocol.callRemote(Note, rid=rid, text="", data=b"", end=True)
    assert transport.socket.sent == [note(0) + note(1), note(2) + note(3)]
    clock.advance(0)
    assert transport.socket.sent[2:] == [note(4)]


def test_what_the_socket_cannot_take_goes_to_the_transport() -> None:
    protocol, transport = Fast(), SocketTransport(room=5)
    clock = timed(protocol, transport)
    protocol.callRemote(Note, rid=1, text="", data=b"", end=True)
    clock.advance(0)
    assert transport.socket.sent == [note(1)[:5]] and transport.written == [note(1)[5:]]
    protocol.callRemote(Note, rid=2, text="", data=b"", end=True)
    clock.advance(0)  # the socket is full: all of it to the transport
    assert transport.written == [note(1)[5:], note(2)]


@pytest.mark.parametrize("why", ["earlier data waits in the transport", "the connection closes"])
def test_boxes_go_through_the_transport_when_the_socket_is_not_free(why: str) -> None:
    waiting = b"earlier" if why.startswith("earlier") else b""
    protocol, transport = Fast(), SocketTransport(waiting=waiting)
    clock = timed(protocol, transport)
    protocol.callRemote(Note, rid=1, text="", data=b"", end=True)
    transport.disconnecting = not waiting
    clock.advance(0)  # nothing jumps ahead of what waits; nothing is sent while closing
    assert transport.socket.sent == [] and transport.written == [note(1)]


def test_other_boxes_go_out_after_the_waiting_ones() -> None:
    protocol, transport = Fast(), SocketTransport()
    clock = timed(protocol, transport)
    protocol.callRemote(Note, rid=1, text="", data=b"", end=True)
    protocol.callRemote(Ask, rid=2)
    assert b"".join(transport.socket.sent + transport.written).startswith(note(1))
    assert len(transport.written) == 1 and b"Ask" in transport.written[0]
    clock.advance(0)
    assert transport.socket.sent == [note(1)]


def test_without_a_socket_boxes_wait_for_the_turn() -> None:
    protocol = Flushing()
    transport = iosim.FakeTransport(protocol, isServer=False)
    timed(protocol, transport)
    for rid in range(3):
        protocol.callRemote(Note, rid=rid, text="", data=b"", end=True)
    assert b"".join(transport.stream) == note(0) + note(1)


class Recorder(FastAMP):
    """Records every box it parses instead of dispatching it."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes: list[dict] = []

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        self.boxes.append(dict(box))


keys = st.binary(min_size=1, max_size=20)
values = st.one_of(
    st.binary(max_size=50),
    st.integers(min_value=60000, max_value=65535).map(lambda n: bytes(n % 251 for n in range(n))),
)
boxes = st.lists(st.dictionaries(keys, values, min_size=1, max_size=4), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(boxes, st.lists(st.integers(min_value=1, max_value=70000), max_size=8))
def test_boxes_parse_whatever_the_chunks(sent, cuts) -> None:
    wire = b"".join(amp.AmpBox(box).serialize() for box in sent)
    protocol = Recorder()
    protocol.makeConnection(iosim.FakeTransport(protocol, isServer=False))
    position = 0
    for cut in cuts:
        protocol.dataReceived(wire[position : position + cut])
        position += cut
    protocol.dataReceived(wire[position:])
    assert protocol.boxes == sent


def test_a_key_over_the_limit_drops_the_connection() -> None:
    fast = Fast()
    transport = iosim.FakeTransport(fast, isServer=False)
    fast.makeConnection(transport)
    fast.dataReceived(b"\x01\x00" + b"k" * 256 + b"\x00\x01v\x00\x00")
    assert transport.disconnecting


def test_an_empty_box_is_refused_as_in_amp() -> None:
    fast = Fast()
    fast.makeConnection(iosim.FakeTransport(fast, isServer=False))
    with pytest.raises(amp.NoEmptyBoxes):
        fast.dataReceived(b"\x00\x00")


def test_a_response_head_is_read_with_its_headers() -> None:
    head = response_head(200, '[["content-type","text/plain"]]', True)
    assert response_start(head) == (200, Headers([("content-type", "text/plain")]), True, None)
    head = response_head(299, "[]", False, "Custom \u00e9")
    assert response_start(head) == (299, Headers(), False, "Custom \u00e9")


@pytest.mark.parametrize(
    "head",
    [
        "",
        "[200",
        "[200,[],true,1]",
        '[200,[],true,"OK",1]',
        '[200,[["a"]],true]',
        '["x",[],true]',
        "{}",
    ],
)
def test_a_malformed_response_head_raises_a_value_or_type_error(head: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        response_start(head)


def test_header_values_that_are_not_text_are_made_text() -> None:
    status, headers, end, _ = response_start('[201,[["x-n",5]],false]')
    assert (status, headers.items(), end) == (201, [("x-n", "5")], False)


def test_request_heads_refuse_what_is_not_json() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        request_head("GET", "/", "", [("x", object())], "", False)
