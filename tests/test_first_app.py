"""
docs/getting-started.md, "Your first app in five minutes", followed step by
step: its shell blocks are run as written (on a free port instead of 8000),
the C{buntime ...} line in the background, and each C{# prints:} comment is
what its command printed, exactly.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "getting-started.md"
SECTION = "## Your first app in five minutes"

pytestmark = pytest.mark.e2e


def section() -> str:
    text = GUIDE.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def commands(text: str) -> list[str]:
    """The commands of the section's C{sh} blocks, a heredoc kept with its command."""
    found: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        lines = block.splitlines()
        while lines:
            command = [lines.pop(0)]
            heredoc = re.search(r"<<'(\w+)'", command[0])
            if heredoc:
                while lines:
                    command.append(lines.pop(0))
                    if command[-1] == heredoc.group(1):
                        break
            if command[0].strip():
                found.append("\n".join(command))
    return found


def expected(command: str) -> str | None:
    match = re.search(r"# prints: (.*)$", command.splitlines()[0])
    return match.group(1).strip() if match else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment() -> dict[str, str]:
    """A user's shell with the venv activated: no buntime variable set."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("RUNTIME_") and name not in ("PORT", "NODE_ENV")
    }
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def wait_ready(port: int, runtime: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health/ready", timeout=2)
            return
        except OSError:
            if runtime.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the runtime did not get ready") from None
            time.sleep(0.1)


@pytest.fixture
def background(tmp_path) -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_the_walk_through_runs_as_written(tmp_path, background):
    port = free_port()
    env = environment()
    steps = commands(section())
    assert any(step.startswith("buntime ") for step in steps)
    assert sum(1 for step in steps if expected(step)) >= 5
    for step in steps:
        runnable = step.replace("8000", str(port))
        if step.startswith("buntime "):
            runtime = subprocess.Popen(
                ["bash", "-c", runnable],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            background.append(runtime)
            wait_ready(port, runtime)
            continue
        done = subprocess.run(
            ["bash", "-c", runnable],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (step, done.stdout, done.stderr)
        want = expected(step)
        if want is not None:
            assert done.stdout.strip() == want, (step, done.stdout, done.stderr)
