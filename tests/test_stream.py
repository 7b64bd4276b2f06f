"""Bodies cut into AMP-sized chunks (L{buntime.pool.stream})."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.protocols import amp

from buntime.pool import events
from buntime.pool.stream import CHUNK_SIZE, MAX_VALUE_LENGTH, chunks, fit_text, split_first

# Sizes around the chunk boundaries matter most; plain binary() rarely reaches them.
bodies = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=0, max_value=3 * CHUNK_SIZE + 7).map(
        lambda n: bytes(n % 251 for n in range(n))
    ),
)


@given(bodies)
def test_chunks_round_trip(data: bytes) -> None:
    pieces = chunks(data)
    assert b"".join(pieces) == data
    assert all(0 < len(piece) <= CHUNK_SIZE for piece in pieces)
    assert len(pieces) == -(-len(data) // CHUNK_SIZE)


@given(bodies)
def test_every_chunk_fits_in_an_amp_box(data: bytes) -> None:
    first, rest = split_first(data)
    assert first + b"".join(rest) == data
    head = events.response_head(200, "[]", not rest)
    start = events.ResponseStart.makeArguments({"rid": 1, "head": head, "body": first}, None)
    assert start.serialize()
    for piece in rest:
        assert events.ResponseBody.makeArguments({"rid": 1, "data": piece}, None).serialize()


def test_empty_data_is_no_chunk() -> None:
    assert chunks(b"") == []
    assert split_first(b"") == (b"", [])


def test_small_size() -> None:
    assert chunks(b"abcde", 2) == [b"ab", b"cd", b"e"]
    with pytest.raises(ValueError):
        chunks(b"x", 0)


def test_one_byte_too_many_does_not_serialize() -> None:
    """The limit the chunks respect is real: a bigger value fails in AMP."""
    box = events.ResponseBody.makeArguments({"rid": 1, "data": b"x" * (MAX_VALUE_LENGTH + 1)}, None)
    with pytest.raises(amp.TooLong):
        box.serialize()


@given(st.text(max_size=200), st.integers(min_value=4, max_value=120))
def test_fit_text(text: str, limit: int) -> None:
    fitted = fit_text(text, limit)
    assert len(fitted.encode("utf-8")) <= limit
    if len(text.encode("utf-8", "replace")) <= limit:
        assert fitted == text.encode("utf-8", "replace").decode("utf-8")
    else:
        assert fitted.endswith("…")


def test_fit_text_makes_tracebacks_fit_a_unicode_value() -> None:
    detail = fit_text("é" * MAX_VALUE_LENGTH)
    box = events.StartupFailed.makeArguments({"error": "x", "detail": detail}, None)
    assert box.serialize()
