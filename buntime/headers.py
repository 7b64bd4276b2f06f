"""
HTTP headers as buntime's value types carry them: L{Headers}, a read-only,
case-insensitive, multi-valued mapping (C{buntime.http} exports it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from attrs import field, frozen

_new = object.__new__

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header name (RFC 9110 C{token})."""
_NAMES: set[str] = set()
"""Names found to be tokens (answers carry the same few: each is checked once)."""
_MAX_NAMES = 1024


def is_header_name(name: str) -> bool:
    """
    Whether C{name} may be sent as a header name (an RFC 9110 token: no
    space, colon or line break, which no client could read, or read alike).
    """
    if name in _NAMES:
        return True
    if _TOKEN.fullmatch(name) is None:
        return False
    if len(_NAMES) < _MAX_NAMES:
        _NAMES.add(name)
    return True


def _pairs(source: object) -> tuple[tuple[str, str], ...]:
    if source is None:
        return ()
    if isinstance(source, Headers):
        return source._items
    if isinstance(source, Mapping):
        items: Iterable[Any] = source.items()
    else:
        items = source  # type: ignore[assignment]
    pairs = []
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        pairs.append((str(name), str(value)))
    return tuple(pairs)


def _pair(name: object, value: object) -> tuple[str, str]:
    """One header as C{set} and C{add} store it (bytes read as L{Headers} reads them)."""
    if type(name) is str and type(value) is str:
        return name, value
    return _pairs([(name, value)])[0]


def _compared_length(wanted: str) -> int:
    """
    The length a name must have to lower to C{wanted} (a lowered name): its
    own, so that most names are told apart without lowering them; -1 (any)
    when C{wanted} is not ASCII, as a name holding U+0130 grows when lowered.
    """
    return len(wanted) if wanted.isascii() else -1


@frozen(eq=False)
class Headers(Mapping[str, str]):
    """
    Immutable, case-insensitive, multi-valued HTTP headers: a read-only
    mapping as C{multidict.CIMultiDictProxy} is one.

    Build one from a dict, a list of C{(name, value)} pairs or another
    C{Headers}.  Names keep the case they were given in (for output) but are
    compared case-insensitively.  C{headers["origin"]} is the first value
    (C{KeyError} when there is none), L{getall} every value; iterating,
    C{keys()}, C{values()}, C{items()} and C{len()} go over every pair in
    order, repeated names included, and C{dict(headers)} keeps the first
    value of each name.
    """

    _items: tuple[tuple[str, str], ...] = field(default=(), converter=_pairs)

    @classmethod
    def _of(cls, items: tuple[tuple[str, str], ...]) -> Headers:
        """Headers holding C{items}, already text pairs (no conversion)."""
        headers = _new(cls)
        _set_items(headers, items)
        return headers

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The first value of C{name}, or C{default}."""
        wanted = name.lower()
        if wanted.isascii():  # L{_compared_length}, without a call: the hottest lookup
            size = len(wanted)
            for key, value in self._items:
                # lengths first: most names differ in length, and lower() makes a new string
                if len(key) == size and key.lower() == wanted:
                    return value
            return default
        for key, value in self._items:
            if key.lower() == wanted:
                return value
        return default

    def __getitem__(self, name: str) -> str:
        """The first value of C{name}; C{KeyError} when it has none."""
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def getall(self, name: str) -> list[str]:
        """Every value of C{name}, in order (empty if absent)."""
        wanted = name.lower()
        size = _compared_length(wanted)
        return [
            value
            for key, value in self._items
            if (len(key) == size or size < 0) and key.lower() == wanted
        ]

    get_all = getall

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        """All C{(name, value)} pairs, in order, repeated names included."""
        return list(self._items)

    def values(self) -> list[str]:  # type: ignore[override]
        """Every value, in order."""
        return [value for _, value in self._items]

    def set(self, name: str, value: str) -> Headers:
        """A copy where C{name} has exactly the one value C{value}."""
        added = _pair(name, value)
        wanted = added[0].lower()
        size = _compared_length(wanted)
        kept = self._items
        for key, _ in kept:
            # there: without it (or them)
            if (len(key) == size or size < 0) and key.lower() == wanted:
                kept = tuple(pair for pair in kept if pair[0].lower() != wanted)
                break
        return Headers._of((*kept, added))

    def set_many(self, pairs: Iterable[tuple[str, str]]) -> Headers:
        """
        A copy where each name of C{pairs} has exactly the values C{pairs}
        give it (in one copy: cheaper than a L{set} per header).
        """
        added = tuple(pairs)
        if not added:
            return self
        names = set()
        for name, value in added:
            if type(name) is not str or type(value) is not str:
                added = _pairs(added)  # bytes or other values: converted as Headers does
                names = {key.lower() for key, _ in added}
                break
            names.add(name.lower())
        kept = self._items
        for key, _ in kept:
            if key.lower() in names:  # set already: without its values
                kept = tuple([pair for pair in kept if pair[0].lower() not in names])
                break
        return Headers._of(kept + added)

    def add(self, name: str, value: str) -> Headers:
        """A copy with one more value for C{name}."""
        return Headers._of((*self._items, _pair(name, value)))

    def remove(self, name: str) -> Headers:
        """A copy without any value for C{name}."""
        wanted = _pair(name, "")[0].lower()
        return Headers._of(tuple(pair for pair in self._items if pair[0].lower() != wanted))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        """Every name, in order, repeated names included (as C{multidict} has it)."""
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._normalized() == other._normalized()

    def __hash__(self) -> int:
        return hash(self._normalized())

    def _normalized(self) -> tuple[tuple[str, str], ...]:
        # Fields of different names are unordered (RFC 9110 §5.3); one name's values are not.
        pairs = ((key.lower(), value) for key, value in self._items)
        return tuple(sorted(pairs, key=lambda pair: pair[0]))

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


_set_items = Headers.__dict__["_items"].__set__
"""
Sets the pairs of a L{Headers} just made (its slot, as attrs' frozen
C{__init__} sets it, without looking the name up), in C{_of}: every copy
is made there, on every request a plugin hooks.
"""
