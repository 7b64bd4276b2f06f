"""
Several replicas on one machine, as Kubernetes runs them: three runtime
processes sharing one worker dir, one plugin dir and one data dir, behind
haproxy (round robin, health-checked on C{/api/health/ready}).  An app
uploaded through one replica is served by all; a replica killed under load
costs at most its requests in flight; a rolling restart under load loses
no request.
"""

from __future__ import annotations

import shutil
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_apps import multipart, zip_archive
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

ROOT = Path(__file__).resolve().parent.parent
REPLICAS = 3
CLIENTS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def haproxy_config(front: int, backends: list[int]) -> str:
    servers = "\n".join(
        f"  server r{index} 127.0.0.1:{port} check" for index, port in enumerate(backends)
    )
    return (
        textwrap.dedent(
            f"""\
        global
          maxconn 2000
        defaults
          mode http
          timeout connect 1s
          timeout client 20s
          timeout server 20s
          timeout check 2s
          retries 3
          option redispatch
          retry-on conn-failure empty-response
        frontend web
          bind 127.0.0.1:{front}
          default_backend runtimes
        backend runtimes
          balance roundrobin
          option httpchk GET /api/health/ready
          http-check expect status 200
          option http-server-close
          default-server inter 100ms fall 3 rise 1
        """
        )
        + servers
        + "\n"
    )


class _Quiet(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output: list[bytes] = []

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output.append(data)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class Cluster:
    """Three replicas sharing their dirs, and haproxy in front of them."""

    def __init__(self, runtimes: Any, tmp_path: Path) -> None:
        self.runtimes = runtimes
        self.apps = tmp_path / "apps"
        shutil.copytree(ROOT / "apps" / "hello", self.apps / "hello")
        self.env = {
            "RUNTIME_ENV": "production",
            "RUNTIME_PLUGIN_DIRS": str(tmp_path / "plugins"),
            "RUNTIME_DATA_DIR": str(tmp_path / "data"),
            "RUNTIME_DRAIN_DELAY": "2s",
            "RUNTIME_POOL_SIZE": "10",
        }
        (tmp_path / "plugins").mkdir()
        self.ports = [free_port() for _ in range(REPLICAS)]
        self.front = free_port()
        self.config = tmp_path / "haproxy.cfg"
        self.config.write_text(haproxy_config(self.front, self.ports))
        self.replicas: list[Any] = []
        self.haproxy: Any = None
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, False)))

    async def start_replica(self, index: int) -> Any:
        proc = await self.runtimes.start(
            worker_dirs=[str(self.apps)],
            env=self.env,
            listen=f"tcp:{self.ports[index]}:interface=127.0.0.1",
        )
        return proc

    async def start(self) -> None:
        for index in range(REPLICAS):
            self.replicas.append(await self.start_replica(index))
        self.haproxy_protocol = _Quiet()
        self.haproxy = reactor.spawnProcess(
            self.haproxy_protocol,
            shutil.which("haproxy") or "haproxy",
            ["haproxy", "-db", "-f", str(self.config)],
            env={"PATH": "/usr/sbin:/usr/bin:/bin"},
        )
        await self.until(self.all_up, 10)

    async def all_up(self) -> bool:
        answers = [await self.get("/api/health/ready") for _ in range(REPLICAS * 2)]
        return all(code == 200 for code in answers)

    async def get(self, path: str, port: int | None = None) -> int:
        try:
            response = await self.http.get(f"http://127.0.0.1:{port or self.front}{path}")
            await response.content()
            return int(response.code)
        except Exception:
            return -1

    async def until(self, check: Any, seconds: float) -> None:
        started = reactor.seconds()
        while not await check():
            assert reactor.seconds() - started < seconds, "the cluster did not settle"
            await deferLater(reactor, 0.05, lambda: None)

    def stop(self) -> None:
        if self.haproxy is not None:
            try:
                self.haproxy.signalProcess("KILL")
            except Exception:
                pass


@pytest_twisted.async_yield_fixture
async def cluster(runtimes: Any, tmp_path: Path) -> Any:
    made = Cluster(runtimes, tmp_path)
    try:
        await made.start()
        yield made
    finally:
        made.stop()
        if made.haproxy is not None:
            await made.haproxy_protocol.ended


class Load:
    """C{CLIENTS} clients asking through haproxy one request after another, until stopped."""

    def __init__(self, cluster: Cluster, path: str = "/hello/") -> None:
        self.cluster = cluster
        self.path = path
        self.codes: list[int] = []
        self.running = True
        self.done = DeferredList([Deferred.fromCoroutine(self._client()) for _ in range(CLIENTS)])

    async def _client(self) -> None:
        while self.running:
            self.codes.append(await self.cluster.get(self.path))

    async def stop(self) -> list[int]:
        self.running = False
        await self.done
        return self.codes


SHARED_APP = {
    "manifest.yaml": "name: shared\nversion: 1.0.0\nttl: 5m\n",
    # app.py needs a module written after it in the archive, and padding
    # makes the extraction take a while: a reader shown half an app fails.
    "app.py": "from answer import ANSWER\nroutes = {'/': lambda request: ANSWER}\n",
    **{f"padding/{index:03}.txt": "x" * 20_000 for index in range(150)},
    "answer.py": "ANSWER = {'shared': True}\n",
}


async def _upload(proc: Any) -> None:
    archive = zip_archive(SHARED_APP)
    body, content_type = multipart("file", "shared.zip", archive)
    response = await proc.request(
        "POST",
        "/api/apps/upload",
        data=body,
        headers={"Content-Type": content_type, "Origin": proc.url},
    )
    assert response.code == 200, await response.text()


class Readers:
    """One client per replica asking for C{path} over and over, until stopped."""

    def __init__(self, cluster: Cluster, path: str) -> None:
        self.running = True
        self.codes: dict[int, list[int]] = {port: [] for port in cluster.ports}

        async def read(port: int) -> None:
            while self.running:
                self.codes[port].append(await cluster.get(path, port))

        self.done = DeferredList([Deferred.fromCoroutine(read(port)) for port in cluster.ports])

    async def stop(self) -> dict[int, list[int]]:
        self.running = False
        await self.done
        return self.codes


async def _everywhere(cluster: Cluster, path: str, code: int, seconds: float = 1.0) -> None:
    async def seen() -> bool:
        answers = [await cluster.get(path, port) for port in cluster.ports]
        return answers == [code] * REPLICAS

    await cluster.until(seen, seconds)


@pytest_twisted.ensureDeferred
async def test_an_app_uploaded_through_one_replica_is_served_by_all_and_deleted_everywhere(
    cluster,
):
    """
    While the app is uploaded through one replica, every replica is read
    all the time: each answers 404 until it serves the whole app, then 200
    for good (never an error from half an app, never a stale 404 after a
    200), all three within a second of the upload's answer.
    """
    first, second, _ = cluster.replicas
    readers = Readers(cluster, "/shared/")
    await deferLater(reactor, 0.2, lambda: None)
    await _upload(first)
    await _everywhere(cluster, "/shared/", 200)
    await deferLater(reactor, 0.2, lambda: None)
    for port, codes in (await readers.stop()).items():
        assert set(codes) <= {404, 200} and 200 in codes, (port, codes)
        served = codes.index(200)
        assert codes[served:] == [200] * (len(codes) - served), (port, codes)
    answer = await cluster.http.get(f"http://127.0.0.1:{cluster.front}/shared/")
    assert await answer.json() == {"shared": True}  # and through the balancer

    readers = Readers(cluster, "/shared/")
    deleted = await second.request(
        "DELETE", "/api/apps/_/shared/1.0.0", headers={"Origin": second.url}
    )
    assert deleted.code == 200
    await _everywhere(cluster, "/shared/", 404)
    await deferLater(reactor, 0.2, lambda: None)
    for port, codes in (await readers.stop()).items():
        assert set(codes) <= {404, 200}, (port, codes)
        gone = codes.index(404)
        assert codes[gone:] == [404] * (len(codes) - gone), (port, codes)


@pytest_twisted.ensureDeferred
async def test_a_replica_killed_under_load_costs_at_most_its_requests_in_flight(cluster):
    load = Load(cluster)
    await deferLater(reactor, 0.5, lambda: None)
    await cluster.replicas[2].kill()
    killed_at = len(load.codes)
    await deferLater(reactor, 1.5, lambda: None)
    codes = await load.stop()
    failures = [code for code in codes if code != 200]
    assert len(failures) <= CLIENTS, failures
    assert codes[killed_at:].count(200) > 20  # the others go on serving
    assert codes[-CLIENTS:] == [200] * CLIENTS


@pytest_twisted.ensureDeferred
async def test_a_rolling_restart_under_load_loses_no_request(cluster):
    load = Load(cluster)
    await deferLater(reactor, 0.3, lambda: None)
    for index in range(REPLICAS):
        old = cluster.replicas[index]
        status = await old.stop("TERM")
        assert status == 0
        cluster.replicas[index] = await cluster.start_replica(index)
        await deferLater(reactor, 0.3, lambda: None)  # a health check or two: back in rotation
    codes = await load.stop()
    assert codes and set(codes) == {200}, [code for code in codes if code != 200]
