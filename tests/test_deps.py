"""
autoInstall: pip into a staging directory that replaces C{.deps} only on
success, skipped when the same requirements are installed already.
"""

from __future__ import annotations

import hashlib
import os
import sys

import pytest
import pytest_twisted
from fakes import result_of
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from buntime.pool.deps import (
    INSTALL_TIMEOUT,
    LOCK_RECIPE,
    MARKER,
    DependencyInstaller,
    InstallError,
    summarize,
)

LOCK = b"attrs==23.1.0 --hash=sha256:" + b"0" * 64 + b"\n"


class FakeProcessTransport:
    def __init__(self) -> None:
        self.signals: list[str] = []

    def signalProcess(self, signal: str) -> None:
        self.signals.append(signal)


class ProcessReactor(MemoryReactorClock):
    """A clock whose spawnProcess records the call instead of starting anything."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict] = []

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None, **kwargs):
        transport = FakeProcessTransport()
        self.spawned.append(
            dict(
                protocol=protocol,
                executable=executable,
                args=args,
                env=env,
                path=path,
                transport=transport,
            )
        )
        return transport

    def target(self, index: int = -1) -> str:
        args = self.spawned[index]["args"]
        return args[args.index("--target") + 1]

    def pip_succeeds(self, index: int = -1, files: tuple[str, ...] = ("attrs/__init__.py",)):
        target = self.target(index)
        for name in files:
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            with open(os.path.join(target, name), "w") as file:
                file.write("# installed\n")
        self.spawned[index]["protocol"].processEnded(Failure(ProcessDone(0)))

    def pip_fails(self, output: bytes, index: int = -1) -> None:
        protocol = self.spawned[index]["protocol"]
        protocol.errReceived(output)
        protocol.processEnded(Failure(ProcessTerminated(exitCode=1)))


@pytest.fixture
def app_dir(tmp_path) -> str:
    (tmp_path / "requirements.txt").write_bytes(LOCK)
    return str(tmp_path)


def test_no_requirements_nothing_to_do(tmp_path):
    reactor = ProcessReactor()
    assert result_of(DependencyInstaller(reactor).ensure(str(tmp_path))) is None
    assert reactor.spawned == []


def test_install(app_dir, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.example/simple")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    reactor = ProcessReactor()
    d = DependencyInstaller(reactor, python="/usr/bin/python3").ensure(app_dir)
    [call] = reactor.spawned
    staging = reactor.target()
    assert call["executable"] == "/usr/bin/python3"
    assert call["args"] == [
        "/usr/bin/python3",
        "-m",
        "pip",
        "install",
        "--require-hashes",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--target",
        staging,
        "-r",
        os.path.join(app_dir, "requirements.txt"),
    ]
    assert call["path"] == app_dir
    assert os.path.dirname(staging) == app_dir and os.path.isdir(staging)
    assert call["env"]["PIP_INDEX_URL"] == "https://pypi.example/simple"
    assert "OPENAI_API_KEY" not in call["env"]
    assert not d.called
    reactor.pip_succeeds()
    assert result_of(d) is None
    deps = os.path.join(app_dir, ".deps")
    assert os.path.isfile(os.path.join(deps, "attrs", "__init__.py"))
    with open(os.path.join(deps, MARKER)) as marker:
        assert marker.read() == hashlib.sha256(LOCK).hexdigest()
    assert not os.path.exists(staging)


def test_installed_once_for_the_same_requirements(app_dir):
    reactor = ProcessReactor()
    installer = DependencyInstaller(reactor)
    d = installer.ensure(app_dir)
    reactor.pip_succeeds()
    result_of(d)
    assert result_of(installer.ensure(app_dir)) is None
    assert len(reactor.spawned) == 1
    # new requirements: installed again, replacing the old packages
    with open(os.path.join(app_dir, "requirements.txt"), "ab") as lock:
        lock.write(b"idna==3.4 --hash=sha256:" + b"1" * 64 + b"\n")
    d = installer.ensure(app_dir)
    assert len(reactor.spawned) == 2
    reactor.pip_succeeds(files=("idna/__init__.py",))
    result_of(d)
    assert sorted(os.listdir(os.path.join(app_dir, ".deps"))) == [MARKER, "idna"]
    assert sorted(os.listdir(app_dir)) == [".deps", "requirements.txt"]


def test_failure_leaves_nothing_and_is_answered_until_the_requirements_change(app_dir):
    reactor = ProcessReactor()
    installer = DependencyInstaller(reactor)
    d = installer.ensure(app_dir)
    reactor.pip_fails(
        b"Collecting attrs==23.1.0\n"
        b"ERROR: Could not find a version that satisfies the requirement attrs==23.1.0\n"
        b"ERROR: No matching distribution found for attrs==23.1.0\n"
    )
    with pytest.raises(InstallError) as info:
        result_of(d)
    why = (
        "ERROR: Could not find a version that satisfies the requirement attrs==23.1.0\n"
        "ERROR: No matching distribution found for attrs==23.1.0"
    )
    assert str(info.value) == why
    assert os.listdir(app_dir) == ["requirements.txt"]  # staging removed, no .deps
    assert len(reactor.spawned) == 1  # no retry loop
    reactor.advance(60)
    for _ in range(3):  # later requests get the same answer, without pip
        with pytest.raises(InstallError) as info:
            result_of(installer.ensure(app_dir))
        assert str(info.value) == why
    assert len(reactor.spawned) == 1
    requirements = os.path.join(app_dir, "requirements.txt")
    stat = os.stat(requirements)
    os.utime(requirements, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    d = installer.ensure(app_dir)  # touched: pip runs again
    assert len(reactor.spawned) == 2
    reactor.pip_succeeds()
    assert result_of(d) is None


HASHES_MISSING = b"""Collecting six==1.16.0
  Downloading six-1.16.0-py2.py3-none-any.whl (11 kB)
ERROR: Hashes are required in --require-hashes mode, but they are missing from some requirements. \
Here is a list of those requirements along with the hashes their downloaded archives actually had. \
You can add lines like these to your requirements.txt to satisfy the requirement:
    six==1.16.0 --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254
"""


def test_a_lock_without_hashes_gets_pip_s_whole_explanation_and_the_recipe(app_dir):
    reactor = ProcessReactor()
    d = DependencyInstaller(reactor).ensure(app_dir)
    reactor.pip_fails(HASHES_MISSING)
    with pytest.raises(InstallError) as info:
        result_of(d)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("ERROR: Hashes are required in --require-hashes mode")
    assert lines[1] == (
        "    six==1.16.0"
        " --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
    )
    assert lines[2] == LOCK_RECIPE


def test_failed_reinstall_keeps_the_previous_packages(app_dir):
    reactor = ProcessReactor()
    installer = DependencyInstaller(reactor)
    d = installer.ensure(app_dir)
    reactor.pip_succeeds()
    result_of(d)
    with open(os.path.join(app_dir, "requirements.txt"), "ab") as lock:
        lock.write(b"# changed\n")
    d = installer.ensure(app_dir)
    reactor.pip_fails(b"ERROR: Hashes are required in --require-hashes mode\n")
    with pytest.raises(InstallError, match="Hashes are required"):
        result_of(d)
    assert os.path.isfile(os.path.join(app_dir, ".deps", "attrs", "__init__.py"))
    assert sorted(os.listdir(app_dir)) == [".deps", "requirements.txt"]


def test_concurrent_requests_share_one_install(app_dir):
    reactor = ProcessReactor()
    installer = DependencyInstaller(reactor)
    first, second = installer.ensure(app_dir), installer.ensure(app_dir)
    assert len(reactor.spawned) == 1
    reactor.pip_succeeds()
    assert result_of(first) is None and result_of(second) is None


def test_pip_that_hangs_is_killed(app_dir):
    reactor = ProcessReactor()
    d = DependencyInstaller(reactor).ensure(app_dir)
    reactor.advance(INSTALL_TIMEOUT)
    with pytest.raises(InstallError, match="did not finish"):
        result_of(d)
    assert reactor.spawned[0]["transport"].signals == ["KILL"]
    reactor.spawned[0]["protocol"].processEnded(Failure(ProcessTerminated(signal=9)))
    assert os.listdir(app_dir) == ["requirements.txt"]


def test_summarize():
    assert summarize(b"", 2) == "pip exited with code 2"
    assert summarize(b"one\ntwo\n\nthree\nfour\nfive\nsix\n", 1) == "two\nthree\nfour\nfive\nsix"
    assert len(summarize(b"ERROR: " + b"x" * 10_000, 1)) == 8000


@pytest_twisted.ensureDeferred
async def test_real_pip_runs(tmp_path):
    """The command line is one the installed pip accepts (nothing to download)."""
    from twisted.internet import reactor

    (tmp_path / "requirements.txt").write_text("# nothing pinned yet\n")
    await DependencyInstaller(reactor, python=sys.executable).ensure(str(tmp_path))
    assert os.path.isfile(tmp_path / ".deps" / MARKER)
