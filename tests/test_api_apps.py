"""
The apps part of the core API (SPEC §4), through L{treq.testing.StubTreq}:
listing, uploading archives, deleting apps and versions, and the JSON errors.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import define, field
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock, deferLater

from buntime.apps.discovery import AppCatalog
from buntime.web.api.apps import AppsAPI

BASE = "http://runtime.test"
MANIFEST = b"name: hello\nversion: 1.0.0\n"


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def make_tgz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def multipart(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of C{(field, filename or None, data)} parts."""
    boundary = "----buntime-test-boundary"
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


@define
class Retirements:
    """The C{retire} callable: records every app dir it is told about."""

    dirs: list[str] = field(factory=list)
    result: Any = None

    def __call__(self, app_dir: str) -> Any:
        self.dirs.append(app_dir)
        return self.result


@define
class Setup:
    root: Path
    worker_dirs: list[Path]
    catalog: AppCatalog
    retire: Retirements
    api: AppsAPI
    stub: StubTreq

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = await self.stub.request(method, BASE + path, **kwargs)
        body = await self.stub.content(response)
        return response.code, json.loads(body) if body else None

    async def upload(self, filename: str | None, data: bytes, field: str = "file"):
        body, headers = multipart((field, filename, data))
        return await self.call("POST", "/api/apps/upload", data=body, headers=headers)

    def snapshot(self) -> list[str]:
        return sorted(
            os.path.relpath(os.path.join(d, n), self.root)
            for d, dirs, files in os.walk(self.root)
            for n in dirs + files
        )


def make_setup(tmp_path: Path, **options: Any) -> Setup:
    first, second = tmp_path / "one", tmp_path / "two"
    for path in (first / "hello@0.9.0", second / "@acme" / "tool" / "1.0.0"):
        path.mkdir(parents=True)
        (path / "manifest.yaml").write_bytes(b"{}\n")
    catalog = AppCatalog([str(first), str(second)], Clock())
    retire = Retirements()
    api = AppsAPI([str(first), str(second)], catalog, retire, **options)
    return Setup(tmp_path, [first, second], catalog, retire, api, StubTreq(api.app.resource()))


@pytest.fixture
def setup(tmp_path: Path, eliot_logger) -> Setup:
    return make_setup(tmp_path)


# -- listing --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_apps(setup: Setup) -> None:
    status, body = await setup.call("GET", "/api/apps")
    assert status == 200
    one, two = (str(p) for p in setup.worker_dirs)
    assert body == [
        {"name": "@acme/tool", "path": os.path.join(two, "@acme", "tool"), "versions": ["1.0.0"]},
        {"name": "hello", "path": one, "versions": ["0.9.0"]},
    ]


# -- uploading ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_upload_zip_installs_and_is_listed_at_once(setup: Setup) -> None:
    await setup.call("GET", "/api/apps")  # the catalog has cached its scan
    status, body = await setup.upload("hello-1.0.0.zip", make_zip({"manifest.yaml": MANIFEST}))
    assert status == 200
    assert body["success"] is True
    app = body["data"]["app"]
    assert (app["name"], app["version"]) == ("hello", "1.0.0")
    assert app["installedAt"].endswith("Z")
    target = setup.worker_dirs[0] / "hello" / "1.0.0"
    assert (target / "manifest.yaml").read_bytes() == MANIFEST
    assert setup.retire.dirs == [str(target)]
    _, listing = await setup.call("GET", "/api/apps")
    assert {"name": "hello", "versions": ["1.0.0", "0.9.0"]}.items() <= listing[1].items()


@pytest_twisted.ensureDeferred
async def test_upload_github_style_tar_gz(setup: Setup) -> None:
    data = make_tgz({"tool-main/manifest.yml": b"name: tool\nversion: 2.0.0-beta.1\n"})
    status, body = await setup.upload("C:\\Downloads\\tool-main.TAR.GZ", data)
    assert status == 200
    assert body["data"]["app"]["version"] == "2.0.0-beta.1"
    assert (setup.worker_dirs[0] / "tool" / "2.0.0-beta.1" / "manifest.yml").is_file()


@pytest_twisted.ensureDeferred
async def test_upload_replacing_a_version_retires_it(setup: Setup) -> None:
    data = make_zip({"manifest.yaml": b"name: hello\nversion: 0.9.0\n", "v2": b""})
    status, _ = await setup.upload("a.zip", data)
    assert status == 200
    flat = setup.worker_dirs[0] / "hello@0.9.0"
    assert sorted(os.listdir(flat)) == ["manifest.yaml", "v2"]
    assert setup.retire.dirs == [str(flat)]


@pytest.mark.parametrize(
    ("parts", "code"),
    [
        ([("other", "a.zip", b"x")], "NO_FILE_PROVIDED"),
        ([("file", None, b"not a file")], "NO_FILE_PROVIDED"),
        ([("file", "", b"")], "NO_FILE_PROVIDED"),
        ([("file", "app.rar", b"Rar!")], "INVALID_FILE_TYPE"),
        ([("file", "app.zip", b"not a zip")], "INVALID_ARCHIVE"),
        ([("file", "app.zip", make_zip({"app.py": b""}))], "MISSING_PARAMS"),
        ([("file", "app.zip", make_zip({"manifest.yaml": b"name: x\n"}))], "MISSING_PARAMS"),
        (
            [("file", "app.zip", make_zip({"manifest.yaml": MANIFEST, "../../evil": b"x"}))],
            "PATH_TRAVERSAL",
        ),
        (
            [("file", "a.zip", make_zip({"manifest.yaml": b"name: ../x\nversion: 1.0.0\n"}))],
            "PATH_TRAVERSAL",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_upload_refusals(setup: Setup, parts, code: str) -> None:
    before = setup.snapshot()
    body, headers = multipart(*parts)
    status, answer = await setup.call("POST", "/api/apps/upload", data=body, headers=headers)
    assert status == 400
    assert answer["error"]["code"] == code
    assert answer["error"]["message"]
    assert setup.snapshot() == before
    assert setup.retire.dirs == []


@pytest.mark.parametrize(
    "headers", [{}, {"content-type": "application/zip"}, {"content-type": "text/plain"}]
)
@pytest_twisted.ensureDeferred
async def test_upload_without_a_multipart_body(setup: Setup, headers) -> None:
    status, answer = await setup.call(
        "POST", "/api/apps/upload", data=make_zip({"manifest.yaml": MANIFEST}), headers=headers
    )
    assert (status, answer["error"]["code"]) == (400, "NO_FILE_PROVIDED")


@pytest_twisted.ensureDeferred
async def test_upload_with_a_malformed_multipart_body(setup: Setup) -> None:
    """twisted.web itself answers a bare 400 to multipart it cannot parse."""
    before = setup.snapshot()
    response = await setup.stub.post(
        BASE + "/api/apps/upload",
        data=b"garbage",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert response.code == 400
    assert setup.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_upload_with_a_multipart_body_cut_short(setup: Setup) -> None:
    """A body that ends inside its part is malformed multipart, not a missing file."""
    body, headers = multipart(("file", "a.zip", make_zip({"manifest.yaml": MANIFEST})))
    before = setup.snapshot()
    status, answer = await setup.call(
        "POST", "/api/apps/upload", data=body[: len(body) // 2], headers=headers
    )
    assert (status, answer["error"]["code"]) == (400, "BAD_REQUEST")
    assert answer["error"]["message"].startswith("Malformed multipart body: ")
    assert setup.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_upload_too_large_when_unpacked(tmp_path: Path, eliot_logger) -> None:
    setup = make_setup(tmp_path, max_total_bytes=1000)
    before = setup.snapshot()
    data = make_zip({"manifest.yaml": MANIFEST, "zeros": bytes(100_000)})
    status, answer = await setup.upload("a.zip", data)
    assert (status, answer["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert setup.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_upload_with_too_many_files(tmp_path: Path, eliot_logger) -> None:
    setup = make_setup(tmp_path, max_files=5)
    data = make_zip({"manifest.yaml": MANIFEST} | {f"f{i}": b"" for i in range(10)})
    status, answer = await setup.upload("a.zip", data)
    assert (status, answer["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")


@pytest_twisted.ensureDeferred
async def test_upload_without_worker_dirs(tmp_path: Path, eliot_logger) -> None:
    api = AppsAPI([], AppCatalog([], Clock()), Retirements())
    stub = StubTreq(api.app.resource())
    body, headers = multipart(("file", "a.zip", make_zip({"manifest.yaml": MANIFEST})))
    response = await stub.post(BASE + "/api/apps/upload", data=body, headers=headers)
    assert response.code == 400
    assert (await stub.json_content(response))["error"]["code"] == "NO_WORKER_DIRS"


@pytest_twisted.ensureDeferred
async def test_upload_in_the_thread_pool(tmp_path: Path, eliot_logger) -> None:
    from twisted.internet import reactor

    setup = make_setup(tmp_path, threads=reactor)
    body, headers = multipart(("file", "a.zip", make_zip({"manifest.yaml": MANIFEST})))
    answer: Deferred = setup.stub.post(BASE + "/api/apps/upload", data=body, headers=headers)
    done: list[bool] = []
    answer.addBoth(lambda result: done.append(True) or result)
    for _ in range(1000):  # the install finishes in a real thread: pump until it answers
        setup.stub.flush()
        if done:
            break
        await deferLater(reactor, 0.01, lambda: None)
    response = await answer
    assert response.code == 200
    assert (setup.worker_dirs[0] / "hello" / "1.0.0" / "manifest.yaml").is_file()


@pytest_twisted.ensureDeferred
async def test_a_failing_retire_is_logged_not_fatal(setup: Setup, eliot_logger) -> None:
    setup.retire.result = fail(RuntimeError("pool is gone"))
    status, _ = await setup.upload("a.zip", make_zip({"manifest.yaml": MANIFEST}))
    assert status == 200
    messages = [m for m in eliot_logger.messages if m.get("message_type", "").startswith("bun")]
    failed = [m for m in messages if m.get("message_type") == "buntime:apps:retire-failed"]
    assert len(failed) == 1
    assert "pool is gone" in failed[0]["message"]


# -- deleting -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_all_versions(setup: Setup) -> None:
    (setup.worker_dirs[1] / "hello" / "2.0.0").mkdir(parents=True)
    await setup.call("GET", "/api/apps")
    status, body = await setup.call("DELETE", "/api/apps/_/hello")
    assert status == 200
    expected = [
        str(setup.worker_dirs[0] / "hello@0.9.0"),
        str(setup.worker_dirs[1] / "hello" / "2.0.0"),
    ]
    assert body == {
        "success": True,
        "data": {"name": "hello", "version": None, "removed": expected},
    }
    assert setup.retire.dirs == expected
    _, listing = await setup.call("GET", "/api/apps")
    assert [app["name"] for app in listing] == ["@acme/tool"]


@pytest.mark.parametrize("scope", ["@acme", "acme", "%40acme"])
@pytest_twisted.ensureDeferred
async def test_delete_one_scoped_version(setup: Setup, scope: str) -> None:
    status, body = await setup.call("DELETE", f"/api/apps/{scope}/tool/1.0.0")
    assert status == 200
    assert body["data"]["name"] == "@acme/tool"
    assert body["data"]["version"] == "1.0.0"
    assert not (setup.worker_dirs[1] / "@acme").exists()


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/apps/_/nope", 404, "APP_NOT_FOUND"),
        ("/api/apps/_/hello/9.9.9", 404, "VERSION_NOT_FOUND"),
        ("/api/apps/other/hello", 404, "APP_NOT_FOUND"),
        ("/api/apps/_/%2E%2E", 400, "PATH_TRAVERSAL"),
        ("/api/apps/%2E%2E/one", 400, "PATH_TRAVERSAL"),
        ("/api/apps/_/hello/%2E%2E", 400, "PATH_TRAVERSAL"),
        ("/api/apps/_/a%5Cb", 400, "PATH_TRAVERSAL"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_delete_errors(setup: Setup, path: str, status: int, code: str) -> None:
    before = setup.snapshot()
    answer_status, answer = await setup.call("DELETE", path)
    assert (answer_status, answer["error"]["code"]) == (status, code)
    assert setup.snapshot() == before
    assert setup.retire.dirs == []


# -- routing --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unknown_route_and_wrong_method(setup: Setup) -> None:
    response = await setup.stub.request("GET", BASE + "/api/apps/upload")
    answer = json.loads(await setup.stub.content(response))
    assert (response.code, answer["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")
    assert response.headers.getRawHeaders("allow") == ["POST"]
    response = await setup.stub.request("PUT", BASE + "/api/apps")
    assert response.headers.getRawHeaders("allow") == ["GET, HEAD"]
    status, answer = await setup.call("DELETE", "/api/apps/_/hello/1.0.0/extra")
    assert (status, answer["error"]["code"]) == (404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("refusal", "status", "code"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 507, "INSUFFICIENT_STORAGE"),
        (
            FileNotFoundError(errno.ENOENT, "No usable temporary directory found in ['/tmp']"),
            500,
            "INTERNAL_ERROR",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_upload_the_temporary_directory_refuses_says_so_in_one_line(
    setup: Setup, eliot_logger, monkeypatch, refusal: OSError, status: int, code: str
) -> None:
    """An archive over 64 KiB waits in TMPDIR while it is read: a full or unusable one says so."""
    import types

    import multipart

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise refusal

    monkeypatch.setattr(multipart, "tempfile", types.SimpleNamespace(TemporaryFile=refused))
    before = setup.snapshot()
    archive = make_zip({"manifest.yaml": MANIFEST, "big.bin": os.urandom(100_000)})
    status_, body = await setup.upload("hello-1.0.0.zip", archive)
    assert (status_, body["error"]["code"]) == (status, code)
    assert body["error"]["message"] == (
        f"The upload could not be kept in the temporary directory (TMPDIR): {refusal.strerror}"
        "; nothing changed"
    )
    assert setup.snapshot() == before
    [line] = [m for m in eliot_logger.messages if m.get("level") == "error"]
    assert line["message_type"] == "buntime:uploads:tempdir-failed" and "traceback" not in line
    monkeypatch.undo()
    status_, _ = await setup.upload("hello-1.0.0.zip", archive)
    assert status_ == 200  # TMPDIR writable again: the same upload goes through


@pytest_twisted.ensureDeferred
async def test_an_upload_the_temporary_directory_refuses_is_logged_on_the_reactor_thread(
    tmp_path: Path, eliot_logger, monkeypatch
) -> None:
    """
    Parsed in the thread pool, the refusal is logged back on the reactor
    thread: eliot's destinations (buffers, streams) are written from it alone.
    """
    import threading
    import types

    import multipart as parser
    from twisted.internet import reactor

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parser, "tempfile", types.SimpleNamespace(TemporaryFile=refused))
    logged_in: list[threading.Thread] = []
    write = eliot_logger.write

    def noting_the_thread(message: dict[str, Any], serializer: Any = None) -> None:
        if message.get("message_type") == "buntime:uploads:tempdir-failed":
            logged_in.append(threading.current_thread())
        write(message, serializer)

    monkeypatch.setattr(eliot_logger, "write", noting_the_thread)
    setup = make_setup(tmp_path, threads=reactor)
    archive = make_zip({"manifest.yaml": MANIFEST, "big.bin": os.urandom(100_000)})
    body, headers = multipart(("file", "hello-1.0.0.zip", archive))
    answer: Deferred = setup.stub.post(BASE + "/api/apps/upload", data=body, headers=headers)
    done: list[bool] = []
    answer.addBoth(lambda result: done.append(True) or result)
    for _ in range(1000):  # parsed in a real thread: pump until it answers
        setup.stub.flush()
        if done:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert (await answer).code == 507
    assert logged_in == [threading.main_thread()]


@pytest_twisted.ensureDeferred
async def test_an_upload_on_a_full_disk_is_a_507_and_leaves_nothing(
    setup: Setup, monkeypatch
) -> None:
    before = setup.snapshot()
    real_mkdir = os.mkdir

    def full(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).endswith("archive"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", full)
    status, body = await setup.upload("hello-1.0.0.zip", make_zip({"manifest.yaml": MANIFEST}))
    assert status == 507
    assert body["error"]["code"] == "INSUFFICIENT_STORAGE"
    assert "No space left on device" in body["error"]["message"]
    assert setup.snapshot() == before
