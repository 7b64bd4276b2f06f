"""
Shared fixtures.

- C{clock}: a L{task.Clock} for code that takes an C{IReactorTime}.
- C{eliot_logger}: every eliot message of the test goes to a
  L{eliot.MemoryLogger} (not to stdout), validated at teardown.
- C{clean_environ}: C{os.environ} without any buntime variable, and the
  working directory a fresh empty one (so no C{.env} is read).
- C{runtimes}: starts real C{twistd -n buntime} processes (see
  C{tests/runtime.py}) and stops all of them at teardown::

      @pytest.mark.e2e
      @pytest_twisted.ensureDeferred
      async def test_something(runtimes, tmp_path):
          proc = await runtimes.start(worker_dirs=[str(tmp_path)])
          response = await proc.get("/api/health")
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import pytest_twisted
from eliot import MemoryLogger
from eliot.testing import check_for_errors, swap_logger
from runtime import RUNTIME_VARIABLES, Runtimes
from twisted.internet.task import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def eliot_logger() -> Iterator[MemoryLogger]:
    """Capture eliot messages; at teardown they must serialize and hold no unflushed traceback."""
    logger = MemoryLogger()
    previous = swap_logger(logger)
    try:
        yield logger
    finally:
        swap_logger(previous)
    logger.validate()
    check_for_errors(logger)


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No buntime variable in C{os.environ}; cwd is an empty temporary directory."""
    for name in list(os.environ):
        if name in RUNTIME_VARIABLES or name.startswith("RUNTIME_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)


@pytest_twisted.async_yield_fixture
async def runtimes():
    """A L{Runtimes} factory; every process it started is stopped at teardown."""
    from twisted.internet import reactor

    factory = Runtimes(reactor)
    try:
        yield factory
    finally:
        await factory.kill_all()
