"""
A shorter path through AMP for the commands every request sends.

AMP's generic machinery (a L{amp.Command} instance per call, argument-name
conversions, three Deferreds for every box received, a method call per
key and per value while parsing) costs more than the work itself on a warm
request.  L{FastAMP} parses boxes a key-value pair at a time, and sends and
receives the commands that need no answer and take only simple arguments
(integers, bytes, text, booleans) directly, each value encoded by its own
L{amp.Argument}: the boxes on the wire are exactly those C{callRemote}
would send, so a plain L{amp.AMP} peer understands them, and every other
command takes the usual route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from twisted.protocols import amp
from twisted.python.failure import Failure

from buntime._turn import EndOfTurn
from buntime.sockets import direct_socket, send_now

_SIMPLE = (amp.Integer, amp.String, amp.Unicode, amp.Boolean)
_COMMAND, _ASK = b"_command", b"_ask"
_MAX_KEY_LENGTH = 255

Fields = tuple[tuple[bytes, str, amp.Argument], ...]
"""A command's arguments as (wire name, keyword, argument)."""

F = TypeVar("F", bound=Callable[..., Any])


def fields_of(command: type[amp.Command]) -> Fields | None:
    """
    The arguments of C{command} when it can take the short path: no answer
    wanted, every argument simple and required.  C{None} otherwise.
    """
    if command.requiresAnswer:
        return None
    fields = []
    for wire, argument in command.arguments:
        if type(argument) not in _SIMPLE or argument.optional:
            return None
        fields.append((wire, wire.decode("ascii").replace("-", "_"), argument))
    return tuple(fields)


Decoders = tuple[tuple[bytes, str, Callable[[bytes], Any] | None], ...]
"""A command's arguments as (wire name, keyword, decoder or C{None} for the bytes as they are)."""

_BOOLEANS = {b"True": True, b"False": False}


def _boolean(value: bytes) -> bool:
    try:
        return _BOOLEANS[value]
    except KeyError:
        raise TypeError(f"Bad boolean value: {value!r}") from None


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _decoders(fields: Fields) -> Decoders:
    """How each argument is read: its L{amp.Argument.fromString}, without a method call."""
    fast: dict[type, Callable[[bytes], Any] | None] = {
        amp.Integer: int,
        amp.String: None,
        amp.Unicode: _text,
        amp.Boolean: _boolean,
    }
    return tuple(
        (wire, keyword, fast[type(argument)] if type(argument) in fast else argument.fromString)
        for wire, keyword, argument in fields
    )


Plan = tuple[tuple[bytes, str | None, Callable[[Any], bytes] | None], ...]
"""
How L{FastAMP.callRemote} writes a command's box, key by key in the order of
the wire (sorted, as L{amp.AmpBox.serialize} sorts): the key's length and
name, the keyword of its value and how the value is encoded (C{None}: bytes
as given); the command's name is one entry of ready bytes (keyword C{None}).
"""


def _integer(value: int) -> bytes:
    return b"%d" % value


def _utf8(value: str) -> bytes:
    return value.encode("utf-8")


_ENCODERS: dict[type, Callable[[Any], bytes] | None] = {
    amp.Integer: _integer,
    amp.String: None,
    amp.Unicode: _utf8,
}
"""What L{amp.Argument.toString} does for each simple argument, without a method call."""


def _plan(command: type[amp.Command]) -> Plan | None:
    """The L{Plan} of C{command}, or C{None} when it cannot take the short path."""
    fields = fields_of(command)
    if fields is None:
        return None

    def named(key: bytes) -> bytes:
        return len(key).to_bytes(2, "big") + key

    entries: list[tuple[bytes, bytes, str | None, Callable[[Any], bytes] | None]] = [
        (_COMMAND, named(_COMMAND) + named(command.commandName), None, None)
    ]
    for wire, keyword, argument in fields:
        kind = type(argument)
        encode = _ENCODERS[kind] if kind in _ENCODERS else argument.toString
        entries.append((wire, named(wire), keyword, encode))
    entries.sort(key=lambda entry: entry[0])
    return tuple((key, keyword, encode) for _, key, keyword, encode in entries)


def responder(command: type[amp.Command]) -> Callable[[F], F]:
    """
    C{command.responder}, and in a L{FastAMP} the method receives
    C{command} without the generic dispatch.
    """
    fields = fields_of(command)
    if fields is None:
        raise TypeError(f"{command.__name__} cannot take the short path")

    def decorate(function: F) -> F:
        function = command.responder(function)
        function.fast_command = command  # type: ignore[attr-defined]
        return function

    return decorate


class FastAMP(amp.AMP):
    """
    An AMP connection where commands that need no answer skip the generic
    machinery: sent by L{callRemote}, received by methods decorated with
    L{responder}.  A responder's exception drops the connection, as in AMP.

    With a C{clock}, the boxes such commands make wait in a list and go out
    together at the end of the reactor turn, or every C{flush_every} boxes
    when that is set (the peer starts on the first commands of a busy turn
    while this side still makes the rest), straight to the socket (see
    L{buntime._turn}).  Every other box waits until those are written.
    Without one (a worker's side), each such box goes out at once, with one
    C{send()} when nothing waits in the transport's buffer.
    """

    flush_every: ClassVar[int] = 0
    clock: Any = None
    _out: list[bytes] | None = None
    _out_waits: bool = False  # a send of the boxes waits for the end of the turn
    _unparsed = b""
    _partial: dict[bytes, bytes] | None = None
    _fast_in: ClassVar[dict[bytes, tuple[Decoders, str]]] = {}
    _fast_out: ClassVar[dict[type[amp.Command], Plan | None]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[bytes, tuple[Decoders, str]] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                command = getattr(value, "fast_command", None)
                if command is None:
                    continue
                fields = fields_of(command)
                if fields is not None:  # always, for a command L{responder} took
                    table[command.commandName] = (_decoders(fields), name)
        cls._fast_in = table

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any:
        plan = self._fast_out.get(commandType, ...)
        if plan is ...:
            plan = self._fast_out[commandType] = _plan(commandType)
        if plan is None or a or len(kw) != len(plan) - 1:
            return super().callRemote(commandType, *a, **kw)
        if self.transport is None:
            raise amp.ConnectionLost()
        parts: list[bytes] = []
        for key, keyword, encode in plan:
            if keyword is None:  # the command's name: the same bytes every time
                parts.append(key)
                continue
            value = kw[keyword]
            if encode is not None:
                value = encode(value)
            length = len(value)
            if length > amp.MAX_VALUE_LENGTH:
                raise amp.TooLong(False, True, value, key[2:])
            parts += (key, length.to_bytes(2, "big"), value)
        parts.append(b"\x00\x00")
        box = b"".join(parts)
        if self.clock is None:
            transport: Any = self.transport
            send_now(transport, direct_socket(transport), box)
            return None
        out = self._out
        if out is None:
            out = self._out = []
        out.append(box)
        if self.flush_every and len(out) >= self.flush_every:
            self.send_waiting()
        elif not self._out_waits:
            self._out_waits = True
            EndOfTurn.of(self.clock).add(self._end_of_turn)
        return None

    def _end_of_turn(self) -> None:
        self._out_waits = False
        self.send_waiting()

    def send_waiting(self) -> None:
        """Write the boxes that wait (see the class docstring)."""
        out = self._out
        if not out:
            return
        data = b"".join(out)
        out.clear()
        transport: Any = self.transport
        send_now(transport, direct_socket(transport), data)

    def sendBox(self, box: amp.AmpBox) -> None:
        """
        Send C{box} after the boxes that wait (in order).  Without a
        C{clock} (a worker's side) it goes as L{callRemote}'s boxes do: with
        one C{send()} when nothing waits in the transport's buffer, so that
        a worker's C{Ready} reaches the runtime without a turn of its event
        loop in between.
        """
        self.send_waiting()
        transport: Any = self.transport
        if (
            self.clock is not None
            or transport is None
            or self._locked
            or self._startingTLSBuffer is not None
        ):
            super().sendBox(box)  # batched by the reactor; or AMP's own errors, switch, TLS
            return
        send_now(transport, direct_socket(transport), box.serialize())

    def dataReceived(self, data: bytes) -> None:
        """
        Split C{data} into boxes (the AMP wire format: 16-bit length-prefixed
        keys and values, an empty key ending a box) and hand each one on.
        """
        if self.innerProtocol is not None:
            super().dataReceived(data)
            return
        buffer = self._unparsed + data if self._unparsed else data
        end = len(buffer)
        position = 0
        box = self._partial
        while end - position >= 2:
            key_length = (buffer[position] << 8) | buffer[position + 1]
            if key_length == 0:
                position += 2
                self._unparsed, self._partial = buffer[position:], None
                self.ampBoxReceived(box if box is not None else {})
                if self.innerProtocol is not None:
                    return
                buffer, end, position, box = self._unparsed, len(self._unparsed), 0, None
                continue
            if key_length > _MAX_KEY_LENGTH:
                self._unparsed, self._partial = b"", None
                self.lengthLimitExceeded(key_length)
                return
            value_at = position + 2 + key_length
            if end - value_at < 2:
                break
            value_length = (buffer[value_at] << 8) | buffer[value_at + 1]
            value_end = value_at + 2 + value_length
            if value_end > end:
                break
            if box is None:
                box = {}
            box[buffer[position + 2 : value_at]] = buffer[value_at + 2 : value_end]
            position = value_end
        self._unparsed, self._partial = buffer[position:], box

    def ampBoxReceived(self, box: dict[bytes, bytes]) -> None:
        """A box of a fast command to its method; any other to AMP (as an L{amp.AmpBox})."""
        fast = self._fast_in.get(box.get(_COMMAND, b""))
        if fast is None or _ASK in box:
            super().ampBoxReceived(box if isinstance(box, amp.AmpBox) else amp.AmpBox(box))
            return
        decoders, name = fast
        try:
            values = {
                key: box[wire] if decode is None else decode(box[wire])
                for wire, key, decode in decoders
            }
            getattr(self, name)(**values)
        except Exception:
            self.unhandledError(Failure())
