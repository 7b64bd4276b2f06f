"""
L{buntime.web.apps.AppStep}, the worker-app dispatch step, over static apps:
which app a path names, the version it serves as the apps change, and the
body limit of a path.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from attrs import define, field
from e2e_apps import static_app, write_app
from fakes import result_of
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock

from buntime.apps.discovery import AppCatalog
from buntime.http import Headers, Request, Response
from buntime.web.apps import AppStep


@define
class CountedCatalog(AppCatalog):
    """An app catalog that remembers what it was asked to resolve."""

    asked: list[tuple[str, str | None]] = field(factory=list, init=False)

    def resolve(self, name: str, spec: str | None):
        self.asked.append((name, spec))
        return super().resolve(name, spec)


def step_over(root, clock: Clock) -> tuple[AppStep, list[tuple[str, str | None]]]:
    catalog = CountedCatalog([str(root)], clock)
    step = AppStep(
        catalog=catalog,
        pool=None,  # type: ignore[arg-type]  # static apps only
        environ={},
        runtime_env=dict,
        body_size_default=1000,
        body_size_max=10_000,
        clock=clock,
    )
    return step, catalog.asked


def get(path: str) -> Request:
    return Request("GET", path, Headers(), b"", "127.0.0.1")


def answer(step: AppStep, path: str, fields: dict[str, Any] | None = None) -> Response | None:
    """The step's answer for C{GET path}, C{None} for "not mine" (static apps answer at once)."""
    pending = step(get(path), {} if fields is None else fields)
    return None if pending is None else result_of(ensureDeferred(pending))


def test_a_path_is_served_by_the_app_it_names(tmp_path):
    static_app(tmp_path, "site", "1.0.0", "one")
    step, asked = step_over(tmp_path, Clock())
    fields: dict[str, Any] = {}
    response = answer(step, "/site/", fields)
    assert response is not None and response.status == 200
    assert b"one" in response.body
    assert fields == {"app": "site@1.0.0"}
    assert asked == [("site", None)]  # routed once


def test_a_static_app_refuses_other_methods_with_405_naming_those_it_takes(tmp_path):
    """RFC 9110 (15.5.6): a 405 carries Allow, as the core API's and routes apps' do."""
    static_app(tmp_path, "site", "1.0.0", "one")
    step, _ = step_over(tmp_path, Clock())
    pending = step(Request("POST", "/site/", Headers(), b"", "127.0.0.1"), {})
    assert pending is not None
    response = result_of(ensureDeferred(pending))
    assert (response.status, response.headers.get("allow")) == (405, "GET, HEAD")
    assert json.loads(response.body)["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_each_path_is_served_by_its_own_app(tmp_path):
    static_app(tmp_path, "site", "1.0.0", "one")
    static_app(tmp_path, "other", "1.0.0", "two")
    step, asked = step_over(tmp_path, Clock())
    assert b"one" in answer(step, "/site/").body
    assert b"two" in answer(step, "/other/").body
    assert asked == [("site", None), ("other", None)]


def test_a_path_naming_no_app_is_not_answered_and_a_bad_range_is_400(tmp_path):
    static_app(tmp_path, "site", "1.0.0", "one")
    step, _ = step_over(tmp_path, Clock())
    assert answer(step, "/missing/") is None
    assert answer(step, "/api/health") is None  # a reserved name
    response = answer(step, "/site@nonsense!/")
    assert response is not None and response.status == 400
    assert response.headers.get("content-type") == "application/json"


def test_a_new_version_is_served_once_the_catalog_sees_it(tmp_path):
    static_app(tmp_path, "site", "1.0.0", "one")
    clock = Clock()
    step, asked = step_over(tmp_path, clock)
    assert b"one" in answer(step, "/site/").body
    static_app(tmp_path, "site", "2.0.0", "two")
    clock.advance(2)  # the catalog looks again
    assert b"two" in answer(step, "/site/").body
    static_app(tmp_path, "site", "3.0.0", "three")
    step.catalog.invalidate()
    assert b"three" in answer(step, "/site/").body
    assert len(asked) == 3


def test_the_body_limit_is_the_app_s_else_the_default(tmp_path):
    write_app(
        tmp_path,
        "upload",
        "1.0.0",
        manifest={"entrypoint": "index.html", "maxBodySize": "5kb"},
        files={"index.html": "<html></html>"},
    )
    step, _ = step_over(tmp_path, Clock())
    assert step.body_limit_for("/upload/files") == 5 * 1024
    assert step.body_limit_for("/missing/") == 1000
    assert step.body_limit_for("/upload@nonsense!/") == 1000


def test_a_version_that_does_not_exist_answers_404_listing_those_that_do(tmp_path):
    static_app(tmp_path, "myapp", "1.2.0", "one")
    static_app(tmp_path, "myapp", "2.0.1", "two")
    static_app(tmp_path, "hello", None, "simple", layout="simple")
    step, _ = step_over(tmp_path, Clock())
    for path, message in [
        ("/myapp@3/", "No version of myapp matches '3'; versions that exist: 2.0.1, 1.2.0"),
        ("/hello@1/x", "No version of hello matches '1'; versions that exist: latest"),
    ]:
        response = answer(step, path)
        assert response is not None and response.status == 404
        assert response.headers.get("x-not-found") == "true"
        assert json.loads(response.body)["error"] == {
            "code": "VERSION_NOT_FOUND",
            "message": message,
        }
    assert answer(step, "/nothing@1/") is None  # no such app: the next step's to answer


def test_a_request_its_hooks_let_through_is_routed_once(tmp_path):
    """The front door asks identify() for plugin hooks; the app step then reuses that answer."""
    static_app(tmp_path, "site", "1.0.0", "one")
    step, asked = step_over(tmp_path, Clock())
    request = get("/site/page")
    found = step.identify(request.path)
    assert found is not None and found[0].name == "site" and found[1] == "/page"
    pending = step(request, {})
    assert pending is not None and result_of(ensureDeferred(pending)).status in (200, 404)
    assert asked == [("site", None)]  # once for both
    step(get("/site/page"), {})  # another request (another path object): routed afresh
    assert asked == [("site", None), ("site", None)]


def test_a_replaced_app_s_new_manifest_is_read_at_once(tmp_path):
    """
    A version replaced in place (new files, the catalog told) is served
    from its new manifest by the next request, not after the manifest's
    recheck interval: here it no longer wants its base injected.
    """
    static_app(tmp_path, "site", "1.0.0", "one")
    clock = Clock()
    step, _ = step_over(tmp_path, clock)
    assert b"<base href" in answer(step, "/site/").body
    replaced = tmp_path / "site@1.0.0"
    for path in replaced.iterdir():
        path.unlink()
    replaced.rmdir()
    write_app(
        tmp_path,
        "site",
        "1.0.0",
        manifest={"entrypoint": "index.html", "injectBase": False},
        files={"index.html": "<!doctype html><html><head></head><body>two</body></html>"},
    )
    step.catalog.invalidate()  # as an upload or a reload does
    response = answer(step, "/site/")
    assert response is not None and response.status == 200
    assert b"two" in response.body
    assert b"<base href" not in response.body


@define
class RetiringPool:
    """
    A pool whose first request waits and is then retired (L{retire}), as
    when its app is replaced: what it was given to do then (C{again}) is
    done.  The requests after it are answered at once with the C{BUILD}
    of the manifest they were given, and the path they were sent.
    """

    calls: list[tuple[str, Any, bool]] = field(factory=list)
    waiting: list[Any] = field(factory=list)

    def handle(self, app, request, base, served=None, again=None):
        self.calls.append((app.version, dict(app.manifest.env), again is not None))
        if not self.waiting:
            waiting: Deferred[Response] = Deferred()
            self.waiting.append((waiting, again, request, base, served))
            return waiting
        build = app.manifest.env.get("BUILD")
        return succeed(Response.json({"build": build, "path": base + request.path}))

    def reroute(self, app, request, base, served=None):
        return self.handle(app, request, base, served)

    def retire(self) -> None:
        waiting, again, request, base, served = self.waiting[0]
        refusal = Response.error(503, "APP_RETIRED", "svc@1.0.0 was replaced or removed")
        answer = again(refusal, request, base, served) if again is not None else refusal
        if isinstance(answer, Deferred):
            answer.chainDeferred(waiting)
        else:
            waiting.callback(answer)


def worker_app(root, build: str):
    return write_app(
        root,
        "svc",
        "1.0.0",
        manifest={"env": {"BUILD": build}},
        files={"app.py": "routes = {'/': 'ok'}\n"},
    )


def app_step(root, pool: RetiringPool) -> AppStep:
    return AppStep(
        catalog=AppCatalog([str(root)], Clock()),
        pool=pool,  # type: ignore[arg-type]
        environ={},
        runtime_env=dict,
        body_size_default=1000,
        body_size_max=10_000,
        clock=Clock(),
    )


def test_a_request_whose_app_is_replaced_while_it_waits_is_served_by_the_new_one(tmp_path):
    """
    The pool retires a replaced app's waiting requests (never sent to a
    worker); the step resolves each again, and the new version answers
    with its new manifest, instead of a 503 APP_RETIRED.
    """
    worker_app(tmp_path, "one")
    pool = RetiringPool()
    step = app_step(tmp_path, pool)
    fields: dict[str, Any] = {}
    pending = step(get("/svc/x"), fields)
    assert pending is not None
    worker_app(tmp_path, "two")  # a new manifest file: replaced
    (tmp_path / "svc@1.0.0" / "manifest.yaml").unlink()
    worker_app(tmp_path, "two")
    step.catalog.invalidate()
    pool.retire()
    response = result_of(ensureDeferred(pending))
    assert (response.status, json.loads(response.body)) == (
        200,
        {"build": "two", "path": "/svc/x"},
    )
    # routed anew once, and not again after that: no loop
    assert pool.calls == [("1.0.0", {"BUILD": "one"}, True), ("1.0.0", {"BUILD": "two"}, False)]
    assert fields["app"] == "svc@1.0.0"


@pytest.mark.parametrize("told", [True, False], ids=["deleted", "removed-by-hand"])
def test_a_request_whose_app_is_removed_while_it_waits_is_503_app_retired(tmp_path, told):
    """
    Removed through the API (the catalog told), or by hand (the catalog's
    scan still lists it for up to a second): the request is not sent
    anywhere, and answers 503 APP_RETIRED.
    """
    worker_app(tmp_path, "one")
    pool = RetiringPool()
    step = app_step(tmp_path, pool)
    pending = step(get("/svc/x"), {})
    assert pending is not None
    for path in (tmp_path / "svc@1.0.0").iterdir():
        path.unlink()
    (tmp_path / "svc@1.0.0").rmdir()
    if told:
        step.catalog.invalidate()
    pool.retire()
    response = result_of(ensureDeferred(pending))
    assert response.status == 503
    assert json.loads(response.body)["error"]["code"] == "APP_RETIRED"
    assert len(pool.calls) == 1


def test_an_app_another_app_s_change_leaves_alone_stays_the_same(tmp_path):
    """
    After the runtime changes some app's files (the catalog told), an app
    whose manifest is as it was stays the same object: what is made from
    it once (its pool app: a crash loop's backoff, its checks) is kept.
    """
    static_app(tmp_path, "site", "1.0.0", "one")
    step, _ = step_over(tmp_path, Clock())
    version = step.catalog.resolve("site", None)
    first = step.load(version)
    static_app(tmp_path, "other", "1.0.0", "two")
    step.catalog.invalidate()
    again = step.load(step.catalog.resolve("site", None))
    assert again is first


def test_a_request_routed_with_a_mount_tells_the_app_that_base(tmp_path):
    """
    A plugin routed the request to the app from elsewhere (a virtual host:
    the app at its host's root): the app is told that base, not its own
    C{/name}, for its x-base and a static app's C{<base href>}.
    """
    static_app(tmp_path, "site", "1.0.0", "one")
    worker_app(tmp_path, "one")
    step, _ = step_over(tmp_path, Clock())
    page = result_of(ensureDeferred(step(get("/site/").with_mount(""), {})))
    assert b'<base href="/">' in page.body
    page = result_of(ensureDeferred(step(get("/site/"), {})))
    assert b'<base href="/site/">' in page.body

    told = []

    class Pool(RetiringPool):
        def handle(self, app, request, base, served=None, again=None):
            told.append((request.path, base, again))
            return succeed(Response.text("ok"))

    step = app_step(tmp_path, Pool())
    result_of(ensureDeferred(step(get("/svc/x").with_mount(""), {})))
    result_of(ensureDeferred(step(get("/svc/x"), {})))
    assert [(path, base) for path, base, _ in told] == [("/x", ""), ("/x", "/svc")]


def test_a_mounted_request_whose_app_is_replaced_while_it_waits_keeps_its_mount(tmp_path):
    """
    Routed anew (see above), a request a plugin mounted elsewhere is found
    by its app's own base and told its mount again.
    """
    worker_app(tmp_path, "one")
    pool = RetiringPool()
    step = app_step(tmp_path, pool)
    pending = step(get("/svc/x").with_mount(""), {})
    assert pending is not None
    (tmp_path / "svc@1.0.0" / "manifest.yaml").unlink()
    worker_app(tmp_path, "two")
    step.catalog.invalidate()
    pool.retire()
    response = result_of(ensureDeferred(pending))
    assert json.loads(response.body) == {"build": "two", "path": "/x"}  # base "" + /x
    assert [again for _, _, again in pool.calls] == [True, False]


def test_a_simple_app_does_not_serve_the_versions_nested_in_its_directory(tmp_path):
    """
    C{<dir>/hello/} (simple layout, C{latest}) and C{<dir>/hello/1.0.0/}
    (nested) are two apps sharing a directory: the simple one's static files
    never include the nested version's (its manifest, its code).
    """
    static_app(tmp_path, "hello", None, "simple", layout="simple")
    write_app(
        tmp_path,
        "hello",
        "1.0.0",
        layout="nested",
        manifest={"entrypoint": "app.py", "env": {"NOTE": "nested-only"}},
        files={"app.py": "SOURCE = 'nested-source'\n"},
    )
    step, _ = step_over(tmp_path, Clock())
    assert b"simple" in answer(step, "/hello/").body
    nested = ("/hello/1.0.0/manifest.yaml", "/hello/1.0.0/app.py", "/hello@latest/1.0.0/app.py")
    for path in (*nested, "/hello/1.0.0/", "/hello/1.0.0"):
        response = answer(step, path)
        assert response is not None and response.status == 404, path
        assert b"nested-" not in response.body, path
    assert b"simple" in answer(step, "/hello/1.0.0.x/page").body  # not a version: its own route
