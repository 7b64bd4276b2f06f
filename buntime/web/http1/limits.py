"""The bounds a connection holds its client to."""

from __future__ import annotations

from attrs import frozen


@frozen
class Limits:
    """
    C{max_target}: the longest request target (414 past it);
    C{max_head}: the most bytes of header lines, C{max_headers} the most
    lines (431 past either); C{header_timeout}: seconds from a head's first
    byte to its end (408 past it, slowloris); C{idle_timeout}: seconds a
    connection may wait for a request, or for a peer that does not read
    its answer, before it is closed (aborted for the peer that does not
    read); C{max_connections}: connections served at once (503 past it);
    C{max_pipeline}: complete requests read ahead of the one being
    answered before reading stops; C{stream_body_over}: a request body
    whose C{Content-Length} is over it is handed on as it arrives (an
    upload), not read whole first.
    """

    max_target: int = 16 * 1024
    max_head: int = 16 * 1024
    max_headers: int = 500
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 4096
    max_pipeline: int = 16
    stream_body_over: int = 256 * 1024
