"""
The template's pages its workers' starts copy (L{buntime.pool.launch.pages}):
learned from real forked children through C{/proc}, and copied ahead.
"""

from __future__ import annotations

import mmap
import os
import socket
import sys
from types import SimpleNamespace

import pytest

from buntime.pool.launch import pages
from buntime.pool.launch import template as template_module
from buntime.pool.launch.pages import Learned, copy_ahead, present, private_writable, ranges
from buntime.pool.launch.template import Template

PAGE = mmap.PAGESIZE

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="/proc/<pid>/pagemap is Linux's"
)


def address_of(region: mmap.mmap) -> int:
    """Where C{region} starts in this process's memory."""
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(region))


@pytest.fixture
def region():
    """Eight private anonymous pages, each written (present) before any fork."""
    memory = mmap.mmap(-1, 8 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for page in range(8):
        memory[page * PAGE] = page + 1
    start = address_of(memory)
    try:
        yield memory, start
    finally:
        del start
        try:
            memory.close()
        except BufferError:  # the ctypes view pins it until collected
            pass


def forked(work) -> tuple[int, socket.socket]:
    """
    A forked child that runs C{work()}, sends one byte when done and waits
    for the parent to close its end: (pid, the parent's end).
    """
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 0
        try:
            ours.close()
            work()
            theirs.sendall(b"x")
            theirs.recv(1)
        except BaseException:
            code = 1
        os._exit(code)
    theirs.close()
    assert ours.recv(1) == b"x"
    return pid, ours


def finish(pid: int, end: socket.socket) -> int:
    end.close()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def covered(learned: Learned, address: int) -> bool:
    return any(start <= address < start + length for start, length in learned.ranges)


def test_pages_next_to_each_other_are_one_range() -> None:
    base = 1000 * PAGE
    found = ranges([base + 3 * PAGE, base, base + PAGE, base + 7 * PAGE])
    assert found == [(base, 2 * PAGE), (base + 3 * PAGE, PAGE), (base + 7 * PAGE, PAGE)]
    assert ranges([]) == []


def test_this_process_s_written_pages_are_present_and_its_own(region) -> None:
    _memory, start = region
    mine = [(start, 8 * PAGE)]
    assert any(s <= start < s + length for s, length in private_writable())
    assert present("self", mine, exclusive=True) == {start + page * PAGE for page in range(8)}


def test_the_pages_a_forked_child_wrote_to_are_learned_and_no_other(region) -> None:
    memory, start = region

    def write() -> None:
        memory[2 * PAGE] = 42
        memory[3 * PAGE + 5] = 42

    pid, end = forked(write)
    learned = Learned()
    try:
        learned.learn(pid)
    finally:
        assert finish(pid, end) == 0
    assert covered(learned, start + 2 * PAGE) and covered(learned, start + 3 * PAGE)
    for untouched in (0, 1, 4, 5, 6, 7):  # still shared with us
        assert not covered(learned, start + untouched * PAGE)


def test_only_what_most_workers_copied_is_copied_ahead(region) -> None:
    """More than half of the samples: with two, what both copied."""
    memory, start = region
    learned = Learned()
    odd_pages = []
    for odd_one_out in (True, False, False):

        def write(odd: bool = odd_one_out) -> None:
            memory[PAGE] = 9
            if odd:
                memory[6 * PAGE] = 9

        pid, end = forked(write)
        try:
            learned.learn(pid)
        finally:
            assert finish(pid, end) == 0
        odd_pages.append(covered(learned, start + 6 * PAGE))
    assert len(learned.samples) == 3
    assert covered(learned, start + PAGE)  # every one copied it
    assert odd_pages == [True, False, False]  # the only sample; one of two; one of three


def test_only_the_last_samples_are_kept(region, monkeypatch) -> None:
    monkeypatch.setattr(pages, "SAMPLES", 2)
    learned = Learned()
    for _ in range(3):
        pid, end = forked(lambda: None)
        try:
            learned.learn(pid)
        finally:
            finish(pid, end)
    assert len(learned.samples) == 2


def test_a_child_that_is_gone_teaches_nothing() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os._exit(0)
    os.waitpid(pid, 0)
    learned = Learned()
    learned.learn(pid)
    assert list(learned.samples) == [] and learned.ranges == []


def test_pages_copied_ahead_are_the_child_s_own_and_unchanged(region) -> None:
    memory, start = region

    def copy() -> None:
        copy_ahead([(start + 2 * PAGE, 3 * PAGE)])
        own = present("self", [(start, 8 * PAGE)], exclusive=True)
        if own != {start + page * PAGE for page in (2, 3, 4)}:
            raise AssertionError(own)
        if [memory[page * PAGE] for page in range(8)] != list(range(1, 9)):
            raise AssertionError("changed")

    pid, end = forked(copy)
    assert finish(pid, end) == 0
    # ours are still ours: the child copied, we kept the originals
    assert [memory[page * PAGE] for page in range(8)] == list(range(1, 9))


def test_a_range_no_longer_mapped_is_skipped_and_the_rest_copied(region) -> None:
    _memory, start = region

    def copy() -> None:
        # the page at 8 * PAGE is below mmap_min_addr: never mapped
        copy_ahead([(8 * PAGE, PAGE), (start + PAGE, PAGE)])
        if present("self", [(start, 8 * PAGE)], exclusive=True) != {start + PAGE}:
            raise AssertionError("not copied")

    pid, end = forked(copy)
    assert finish(pid, end) == 0


# -- when the template looks ---------------------------------------------------------


class Clocked:
    """A Template whose clock is ours and whose looks are noted, not made."""

    def __init__(self, monkeypatch) -> None:
        self.now = 100.0
        monkeypatch.setattr(template_module, "time", SimpleNamespace(monotonic=lambda: self.now))
        self.control, self.other = socket.socketpair()
        self.template = Template(self.control)
        self.looked: list[int] = []
        self.template.learned = SimpleNamespace(learn=self.looked.append)  # type: ignore[assignment]

    def close(self) -> None:
        for fd in (self.template.wake_r, self.template.wake_w):
            os.close(fd)
        self.control.close()
        self.other.close()


@pytest.fixture
def clocked(monkeypatch):
    template = Clocked(monkeypatch)
    try:
        yield template
    finally:
        template.close()


def test_the_template_looks_at_a_worker_once_its_start_is_done(clocked) -> None:
    template = clocked.template
    template.spare = 1  # none due
    assert template._wait() is None
    template.children.add(7)
    template._launched(7)
    assert template._wait() == pytest.approx(pages.LEARN_AFTER)
    template._learn()
    assert clocked.looked == []  # too soon
    clocked.now += pages.LEARN_AFTER
    assert template._wait() == 0
    template._learn()
    assert clocked.looked == [7]
    assert template._wait() is None  # nothing left due: the loop does not spin


def test_the_template_looks_at_most_once_a_while_and_at_the_latest_worker(clocked) -> None:
    template = clocked.template
    template.spare = 1
    template.children.update({7, 8, 9, 10})
    for pid in (7, 8):
        template._launched(pid)
    clocked.now += pages.LEARN_AFTER
    template._learn()
    assert clocked.looked == [8]  # the latest of those due
    template._launched(9)
    clocked.now += pages.LEARN_AFTER
    template._learn()
    assert clocked.looked == [8]  # within LEARN_EVERY of the last look: skipped
    assert template._wait() is None  # (and forgotten: no spinning on it)
    clocked.now += pages.LEARN_EVERY
    template._launched(10)
    clocked.now += pages.LEARN_AFTER
    template._learn()
    assert clocked.looked == [8, 10]


def test_a_worker_that_ended_before_its_look_is_not_looked_at(clocked) -> None:
    template = clocked.template
    template.spare = 1
    template.children.add(7)
    template._launched(7)
    template.children.discard(7)  # reaped
    clocked.now += pages.LEARN_AFTER
    template._learn()
    assert clocked.looked == []
