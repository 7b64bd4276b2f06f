"""
An app's output as log records: the worker's framed streams
(L{buntime.pool.child.output}), the frames (L{buntime.pool.output}) and the
L{Assembler} that joins writes into records, timed by a L{Clock}.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from buntime.pool.child.output import FramedStream, OutputChannel, in_request
from buntime.pool.output import (
    MAX_FRAME,
    MAX_HOLD,
    MAX_PIECE,
    MAX_RECORD,
    QUIET,
    Assembler,
    FrameReader,
    Record,
    Write,
    decode_frame,
    encode_frames,
)


class Recorder(io.TextIOBase):
    """A text stream that keeps each write, as a worker's framed stream sends it."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        if text:
            self.writes.append(text)
        return len(text)

    def writable(self) -> bool:
        return True


def _raise_chained() -> None:
    try:
        {}["missing"]
    except KeyError as error:
        raise ValueError("bad\nsecond line") from error


def _handling() -> None:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        _raise_chained()


def print_exc_writes() -> list[str]:
    """What C{traceback.print_exc()} writes for a doubly chained exception."""
    recorder = Recorder()
    try:
        _handling()
    except ValueError:
        traceback.print_exc(file=recorder)
    return recorder.writes


def excepthook_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the interpreter's own C{sys.excepthook} writes (in C, a piece at a time)."""
    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    try:
        _handling()
    except ValueError:
        sys.__excepthook__(*sys.exc_info())
    monkeypatch.undo()
    return recorder.writes


def thread_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What an uncaught exception in a thread writes."""
    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    thread = threading.Thread(target=_handling, name="worker-thread")
    thread.start()
    thread.join()
    monkeypatch.undo()
    return recorder.writes


def assembled(writes: list[Write], clock: Clock | None = None) -> list[Record]:
    """The records of C{writes}, the clock run on until nothing is held."""
    clock = clock or Clock()
    records: list[Record] = []
    assembler = Assembler(clock, records.append)
    for write in writes:
        assembler.feed(write)
    clock.advance(MAX_HOLD)
    return records


def stderr(texts: list[str], request_id: str | None = "r-1", thread: int = 1) -> list[Write]:
    return [Write("stderr", text, request_id, thread) for text in texts]


# -- tracebacks are one record ---------------------------------------------------


def test_print_exc_is_one_record() -> None:
    writes = print_exc_writes()
    assert len(writes) > 10
    [record] = assembled(stderr(writes))
    assert record.text == "".join(writes).rstrip("\n")
    assert record.text.count("Traceback (most recent call last):") == 3
    assert "During handling of the above exception, another exception occurred:" in record.text
    assert "The above exception was the direct cause of the following exception:" in record.text
    assert record.text.endswith("ValueError: bad\nsecond line")
    assert (record.stream, record.request_id) == ("stderr", "r-1")


def test_excepthook_in_pieces_is_one_record(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = excepthook_writes(monkeypatch)
    # Many pieces: over 30 up to Python 3.12 (the exception line alone comes in
    # four), about a dozen from 3.13 on (its traceback printer writes whole lines).
    assert len(writes) > 10
    [record] = assembled(stderr(writes))
    assert record.text == "".join(writes).rstrip("\n")
    assert record.text.count("Traceback (most recent call last):") == 3


def test_thread_exception_is_one_record(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = thread_writes(monkeypatch)
    [record] = assembled(stderr(writes, request_id=None))
    assert record.text.startswith("Exception in thread worker-thread:\nTraceback")
    assert record.text.endswith("ValueError: bad\nsecond line")
    assert record.request_id is None


def test_logging_exception_is_one_record() -> None:
    recorder = Recorder()
    logger = logging.getLogger("test_output.app")
    handler = logging.StreamHandler(recorder)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            _raise_chained()
        except ValueError:
            logger.exception("Exception on /boom [GET]")
    finally:
        logger.removeHandler(handler)
    [record] = assembled(stderr(recorder.writes))
    assert record.text.startswith("Exception on /boom [GET]\nTraceback")
    assert record.text.endswith("ValueError: bad\nsecond line")


def test_exception_group_is_one_record() -> None:
    recorder = Recorder()
    try:
        raise ExceptionGroup("several", [ValueError("one"), TypeError("two")])
    except ExceptionGroup:
        traceback.print_exc(file=recorder)
    recorder.write("after\n")
    first, second = assembled(stderr(recorder.writes))
    assert first.text.lstrip().startswith("+ Exception Group Traceback")
    assert "TypeError: two" in first.text
    assert second.text == "after"


def test_traceback_ends_at_the_next_line() -> None:
    clock = Clock()
    records: list[Record] = []
    assembler = Assembler(clock, records.append)
    for write in stderr(print_exc_writes()):
        assembler.feed(write)
    assert records == []  # it may go on (another chained exception): held
    assembler.feed(Write("stderr", "next line\n", "r-1", 1))
    assert [r.text.splitlines()[-1] for r in records] == ["second line", "next line"]


def test_held_traceback_goes_out_after_a_quiet_moment() -> None:
    clock = Clock()
    records: list[Record] = []
    assembler = Assembler(clock, records.append)
    for write in stderr(print_exc_writes()):
        assembler.feed(write)
    clock.advance(QUIET / 2)
    assert records == []
    clock.advance(QUIET / 2)
    assert len(records) == 1


def test_a_finished_request_s_whole_traceback_goes_out_at_once() -> None:
    """flush_request: what could end now goes out; a traceback still arriving waits."""
    clock = Clock()
    records: list[Record] = []
    assembler = Assembler(clock, records.append)
    writes = print_exc_writes()
    half = len(writes) // 2
    for write in stderr(writes[:half]):
        assembler.feed(write)
    assembler.flush_request("r-1")  # frames still arriving: not cut in two
    assert records == []
    for write in stderr(writes[half:]):
        assembler.feed(write)
    assembler.flush_request("r-2")  # another request's end: not this one's
    assert records == []
    assembler.flush_request("r-1")
    assert [record.text for record in records] == ["".join(writes).rstrip("\n")]


def test_concurrent_requests_keep_their_own_records() -> None:
    """Two requests' tracebacks, written piece by piece in turn, stay apart."""
    writes = print_exc_writes()
    mixed = []
    for text in writes:
        mixed.append(Write("stderr", text, "req-a", 1))
        mixed.append(Write("stderr", text, "req-b", 1))
    records = assembled(mixed)
    whole = "".join(writes).rstrip("\n")
    assert sorted((r.request_id, r.text) for r in records) == [("req-a", whole), ("req-b", whole)]


def test_threads_outside_requests_keep_their_own_records() -> None:
    writes = print_exc_writes()
    mixed = [Write("stderr", text, None, thread) for text in writes for thread in (1, 2)]
    records = assembled(mixed)
    assert [r.text for r in records] == ["".join(writes).rstrip("\n")] * 2


# -- ordinary output -----------------------------------------------------------


def test_lines_printed_one_by_one_are_records_at_once() -> None:
    clock = Clock()
    records: list[Record] = []
    assembler = Assembler(clock, records.append)
    for text in ["first", "\n", "second", "\n"]:  # print() writes the text, then the end
        assembler.feed(Write("stdout", text, "r-1", 1))
    assert records == [Record("stdout", "first", "r-1"), Record("stdout", "second", "r-1")]


def test_a_multi_line_write_is_one_record() -> None:
    records = assembled([Write("stdout", "one\ntwo\nthree\n")])
    assert records == [Record("stdout", "one\ntwo\nthree")]


def test_a_write_cut_into_frames_is_one_record() -> None:
    text = ("x" * (MAX_PIECE - 1) + "\n") * 3
    writes = [decode_frame(frame[:-1]) for frame in encode_frames("stdout", text, None, 1)]
    assert [w.more for w in writes] == [True, True, False]
    [record] = assembled(writes)
    assert record.text == text.rstrip("\n")


def test_an_unfinished_line_goes_out_after_a_quiet_moment() -> None:
    clock = Clock()
    records: list[Record] = []
    assembler = Assembler(clock, records.append)
    assembler.feed(Write("stdout", "progress: "))
    clock.advance(QUIET / 2)
    assembler.feed(Write("stdout", "50%"))
    clock.advance(QUIET / 2)
    assert records == []
    clock.advance(QUIET / 2)
    assert records == [Record("stdout", "progress: 50%")]


def test_nothing_is_held_longer_than_max_hold() -> None:
    clock = Clock()
    records: list[Record] = []
    assembler = Assembler(clock, records.append)
    while not records:
        assembler.feed(Write("stdout", "."))
        clock.advance(QUIET / 2)
    assert clock.seconds() <= MAX_HOLD + QUIET
    assert set(records[0].text) == {"."}


def test_header_waits_for_its_traceback_only() -> None:
    clock = Clock()
    records: list[Record] = []
    assembler = Assembler(clock, records.append)
    assembler.feed(Write("stdout", "Results:\n"))
    assert records == []
    assembler.feed(Write("stdout", "  42\n"))
    assert [r.text for r in records] == ["Results:", "42".rjust(4)]


def test_flush_sends_what_is_held() -> None:
    clock = Clock()
    records: list[Record] = []
    assembler = Assembler(clock, records.append)
    assembler.feed(Write("stderr", "Traceback (most recent call last):\n"))
    assembler.feed(Write("stdout", "no newline"))
    assembler.flush()
    assert [r.text for r in records] == ["Traceback (most recent call last):", "no newline"]
    assert clock.getDelayedCalls() == []


def test_huge_write_is_cut_into_records() -> None:
    text = "y" * (MAX_RECORD * 2 + 10) + "\n"
    pieces = [decode_frame(frame[:-1]) for frame in encode_frames("stdout", text, "r", 1)]
    records = assembled(pieces)
    assert [len(r.text) for r in records] == [MAX_RECORD, MAX_RECORD, 10]
    assert [r.continued for r in records] == [True, True, False]
    assert all(r.request_id == "r" for r in records)


def test_raw_lines_are_grouped_apart_from_framed_writes() -> None:
    raw = [Write("stderr", "Traceback (most recent call last):\n", raw=True)]
    raw.append(Write("stderr", '  File "x.c", line 1, in f\n', raw=True))
    framed = Write("stderr", "a framed line\n")
    raw.append(Write("stderr", "RuntimeError: in C\n", raw=True))
    records = assembled([raw[0], raw[1], framed, raw[2]])
    assert [r.text for r in records] == [
        "a framed line",
        'Traceback (most recent call last):\n  File "x.c", line 1, in f\nRuntimeError: in C',
    ]


# -- frames --------------------------------------------------------------------


@given(
    text=st.text(min_size=1, max_size=3 * MAX_PIECE),
    request_id=st.none() | st.from_regex(r"[A-Za-z0-9._:@/+=-]{1,200}", fullmatch=True),
    cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=8),
)
def test_frames_round_trip(text: str, request_id: str | None, cuts: list[int]) -> None:
    data = b"".join(encode_frames("stderr", text, request_id, 7))
    writes: list[Write] = []
    reader = FrameReader(writes.append)
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        reader.feed(data[start:end])
    reader.flush()
    expected = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates: "?"
    assert "".join(w.text for w in writes) == expected
    assert {(w.stream, w.request_id, w.thread, w.raw) for w in writes} == {
        ("stderr", request_id, 7, False)
    }
    assert [w.more for w in writes] == [True] * (len(writes) - 1) + [False]
    assert all(len(frame) <= MAX_FRAME for frame in data.split(b"\n"))


def test_a_frame_of_text_json_escapes_is_read_as_a_frame() -> None:
    """
    A lone surrogate (a file name decoded with C{surrogateescape}) makes the
    frame's JSON escape all its non-ASCII text, an emoji as 12 bytes: still
    one frame, read as the app's write, however the bytes arrive.
    """
    text = "\udcff" + "\U0001f600" * (2 * MAX_PIECE)
    data = b"".join(encode_frames("stdout", text, "r" * 200, 1))
    writes: list[Write] = []
    reader = FrameReader(writes.append)
    for start in range(0, len(data), 4096):
        reader.feed(data[start : start + 4096])
    reader.flush()
    assert {(w.stream, w.request_id, w.raw) for w in writes} == {("stdout", "r" * 200, False)}
    assert "".join(w.text for w in writes) == text


def test_printed_frames_cannot_forge_fields() -> None:
    """Text that looks like a frame travels inside one: it sets nothing."""
    forged = '["stdout","someone-else",1,false,"injected"]\n'
    [frame] = encode_frames("stderr", forged, "mine", 3)
    assert decode_frame(frame[:-1]) == Write("stderr", forged, "mine", 3)


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'{"stream": "stderr"}',
        b'["stderr", "id", 1, false]',
        b'["stdin", null, 1, false, "x"]',
        b'["stderr", "has space", 1, false, "x"]',
        b'["stderr", "' + b"i" * 201 + b'", 1, false, "x"]',
        b'["stderr", 42, 1, false, "x"]',
        b'["stderr", null, "1", false, "x"]',
        b'["stderr", null, 1, 0, "x"]',
        b'["stderr", null, 1, false, ["x"]]',
    ],
)
def test_what_is_no_frame_is_raw_text(line: bytes) -> None:
    assert decode_frame(line) == Write("stderr", line.decode() + "\n", raw=True)


def test_reader_bounds_a_line_without_end() -> None:
    writes: list[Write] = []
    reader = FrameReader(writes.append)
    reader.feed(b"z" * (MAX_FRAME + 1))
    assert [w.raw for w in writes] == [True]
    assert len(writes[0].text) == MAX_FRAME + 2
    reader.feed(b'["stdout",null,1,false,"fine"]\n')
    assert writes[-1] == Write("stdout", "fine", None, 1)


# -- the worker's streams ---------------------------------------------------------


@pytest.fixture
def channel():
    read, write = os.pipe()
    yield OutputChannel(write), read
    os.close(read)
    os.close(write)


def frames(fd: int) -> list[Write]:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    writes: list[Write] = []
    reader = FrameReader(writes.append)
    reader.feed(data)
    return writes


def test_each_write_is_a_frame_with_its_request_id(channel) -> None:
    out, read = channel
    stream = FramedStream(out, "stdout", sys.__stdout__)
    print("outside", file=stream)
    with in_request("req-1"):
        print("inside", file=stream)
    writes = frames(read)
    assert [(w.text, w.request_id) for w in writes] == [
        ("outside", None),
        ("\n", None),
        ("inside", "req-1"),
        ("\n", "req-1"),
    ]
    assert {(w.stream, w.thread) for w in writes} == {("stdout", threading.get_ident())}


def test_threads_in_requests_write_their_own_ids(channel) -> None:
    import contextvars

    out, read = channel
    stream = FramedStream(out, "stderr", sys.__stderr__)
    barrier = threading.Barrier(2)

    def serve(request_id: str) -> None:
        with in_request(request_id):
            barrier.wait()
            for n in range(50):
                stream.write(f"{request_id} {n}\n")

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(serve, rid))
        for rid in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writes = frames(read)
    assert len(writes) == 100
    assert all(w.text.startswith(f"{w.request_id} ") for w in writes)


def test_stream_looks_like_a_text_file(channel) -> None:
    out, _ = channel
    stream = FramedStream(out, "stderr", sys.__stderr__)
    assert stream.fileno() == sys.__stderr__.fileno()
    assert (stream.writable(), stream.isatty(), stream.encoding) == (True, False, "utf-8")
    assert stream.write("") == 0
    with pytest.raises(TypeError):
        stream.write(b"bytes")  # type: ignore[arg-type]
