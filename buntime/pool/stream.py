"""
Bodies and long texts cut to fit in AMP values (at most 64 KiB each).

Both sides of the pool use these: a body travels as its first chunk inside
the command that opens the request or response, then as one command per
further chunk.  L{chunks} of empty data is an empty list, so a loop over the
chunks needs no special case for empty bodies.
"""

from __future__ import annotations

from twisted.protocols.amp import MAX_VALUE_LENGTH

from buntime.pool.commands import CHUNK_SIZE

__all__ = ["CHUNK_SIZE", "MAX_VALUE_LENGTH", "chunks", "fit_text", "split_first"]


def chunks(data: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    """
    C{data} cut into pieces of at most C{size} bytes, in order.

    Empty data gives no chunk at all (C{[]}).
    """
    if size <= 0:
        raise ValueError(f"chunk size must be positive, not {size}")
    if len(data) <= size:
        return [bytes(data)] if data else []
    view = memoryview(data)
    return [view[offset : offset + size].tobytes() for offset in range(0, len(view), size)]


def split_first(data: bytes, size: int = CHUNK_SIZE) -> tuple[bytes, list[bytes]]:
    """
    The first chunk of C{data} (possibly empty) and the chunks after it: what
    a command carrying the first chunk inline and its follow-ups need.
    """
    if len(data) <= size:
        return bytes(data), []
    pieces = chunks(data, size)
    return pieces[0], pieces[1:]


def fit_text(text: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """
    C{text} shortened so its UTF-8 encoding fits in C{limit} bytes (an AMP
    C{Unicode} value); a cut text ends with C{"…"}.  Characters UTF-8
    cannot encode (lone surrogates) become C{"?"}.
    """
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return encoded.decode("utf-8")
    ellipsis = "…".encode()
    cut = encoded[: max(0, limit - len(ellipsis))].decode("utf-8", "ignore")
    return cut + "…"
