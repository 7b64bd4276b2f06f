"""
autoInstall: an app's pinned dependencies, installed with pip into
C{<app>/.deps} before its first worker starts.

pip runs with C{--require-hashes} (the requirements file is a frozen lock)
and C{--only-binary=:all:} (no build scripts run), into a temporary
directory that replaces C{.deps} only once pip succeeded, so a failed install
leaves the previous state untouched.  A hash of C{requirements.txt} stored
next to the packages skips installs already done.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import uuid

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from buntime.logs import log

REQUIREMENTS = "requirements.txt"
DEPS_DIR = ".deps"
MARKER = ".requirements.sha256"
INSTALL_TIMEOUT = 600.0
"""Seconds pip may run before it is killed and the install counts as failed."""
_OUTPUT_LIMIT = 64 * 1024
_PIP_ENV = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR"}
_PIP_ENV |= {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}


class InstallError(Exception):
    """pip failed; the message is pip's explanation (L{summarize})."""


class _PipProtocol(ProcessProtocol):
    """Keeps the tail of pip's output and fires C{done} with its exit code."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.done: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._keep(data)

    def errReceived(self, data: bytes) -> None:
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        self.output += data
        del self.output[:-_OUTPUT_LIMIT]

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.done.callback(-1 if code is None else code)


LOCK_RECIPE = (
    "Every requirement must be pinned with its hashes: make the lock with"
    " pip-compile --generate-hashes (see docs/apps.md, 'Dependencies and autoInstall')."
)
_EXPLANATION_LIMIT = 8000


def summarize(output: bytes, code: int) -> str:
    """
    pip's explanation: its output from the first C{ERROR:} line on (a hash
    error lists the lines to add), else its last lines; with the lock recipe
    when hashes are what failed.
    """
    lines = [line.rstrip() for line in output.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line.strip()]
    first = next((i for i, line in enumerate(lines) if line.startswith("ERROR:")), None)
    kept = lines[first:] if first is not None else lines[-5:]
    explanation = "\n".join(kept) or f"pip exited with code {code}"
    if len(explanation) > _EXPLANATION_LIMIT:
        explanation = explanation[: _EXPLANATION_LIMIT - 3] + "..."
    if "hash" in explanation.lower():
        explanation += "\n" + LOCK_RECIPE
    return explanation


def _pip_env() -> dict[str, str]:
    """The runtime's environment minus everything pip does not need (secrets)."""
    return {k: v for k, v in os.environ.items() if k in _PIP_ENV or k.startswith("PIP_")}


@define(eq=False)
class DependencyInstaller:
    """Installs apps' C{requirements.txt}; one pip run per app at a time."""

    reactor: IReactorProcess
    python: str = sys.executable
    timeout: float = INSTALL_TIMEOUT
    _running: dict[str, list[Deferred]] = field(factory=dict)
    _failed: dict[str, tuple[tuple[str, int], str]] = field(factory=dict)
    """Per app: the requirements (digest, mtime) that failed, and why."""

    def ensure(self, app_dir: str) -> Deferred:
        """
        Fire once C{app_dir}'s dependencies are installed (at once when there
        is no C{requirements.txt} or it was installed already); fail with
        L{InstallError}.  A failure is answered again, without running pip,
        until C{requirements.txt} changes (or is touched).
        """
        waiter: Deferred = Deferred()
        if app_dir in self._running:
            self._running[app_dir].append(waiter)
            return waiter
        self._running[app_dir] = [waiter]
        Deferred.fromCoroutine(self._install(app_dir)).addBoth(self._finished, app_dir)
        return waiter

    def _finished(self, result: object, app_dir: str) -> None:
        for waiter in self._running.pop(app_dir, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    async def _install(self, app_dir: str) -> None:
        requirements = os.path.join(app_dir, REQUIREMENTS)
        try:
            with open(requirements, "rb") as lock:
                digest = hashlib.sha256(lock.read()).hexdigest()
                stamp = (digest, os.fstat(lock.fileno()).st_mtime_ns)
        except FileNotFoundError:
            return
        target = os.path.join(app_dir, DEPS_DIR)
        if _read(os.path.join(target, MARKER)) == digest:
            return
        failed = self._failed.get(app_dir)
        if failed is not None and failed[0] == stamp:
            raise InstallError(failed[1])
        staging = tempfile.mkdtemp(prefix=DEPS_DIR + "-", dir=app_dir)
        log("info", "buntime:deps:install", "Installing app dependencies", app_dir=app_dir)
        try:
            await self._pip(app_dir, requirements, staging)
            with open(os.path.join(staging, MARKER), "w") as marker:
                marker.write(digest)
            _swap(staging, target)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            log(
                "error",
                "buntime:deps:failed",
                "Installing app dependencies failed",
                app_dir=app_dir,
                error=str(error),
            )
            self._failed[app_dir] = (stamp, str(error))
            if isinstance(error, Exception) and not isinstance(error, InstallError):
                raise InstallError(str(error)) from error
            raise
        self._failed.pop(app_dir, None)
        log("info", "buntime:deps:installed", "App dependencies installed", app_dir=app_dir)

    async def _pip(self, app_dir: str, requirements: str, target: str) -> None:
        argv = [self.python, "-m", "pip", "install", "--require-hashes", "--only-binary=:all:"]
        argv += ["--no-input", "--disable-pip-version-check", "--target", target]
        argv += ["-r", requirements]
        pip = _PipProtocol()
        process = self.reactor.spawnProcess(pip, self.python, argv, env=_pip_env(), path=app_dir)
        try:
            code = await pip.done.addTimeout(self.timeout, self.reactor)  # type: ignore[arg-type]
        except Exception:
            process.signalProcess("KILL")
            raise InstallError(f"pip did not finish within {self.timeout:g}s") from None
        if code != 0:
            raise InstallError(summarize(bytes(pip.output), code))


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def _swap(staging: str, target: str) -> None:
    """Put C{staging} in place of C{target}, restoring C{target} if that fails."""
    old = None
    if os.path.lexists(target):
        old = f"{target}.old-{uuid.uuid4().hex}"
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
