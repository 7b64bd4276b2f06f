"""
Step 9 of the order of resolution: worker apps at C{/<name>[@range]/...}.

Resolves the name and range to an app directory, reads its manifest (cached
until the file changes), and answers from static files (an C{index.html}
app) or from the app's worker through the pool.  HTML responses get their
C{<base href>}.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any, ClassVar

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from buntime.apps.discovery import AppCatalog, AppVersion, ordered_versions, split_app_path
from buntime.apps.resolve import EntrypointError, resolve
from buntime.apps.versions import InvalidRange
from buntime.http import AppInfo, Headers, Request, Response
from buntime.logs import log
from buntime.manifest import AppManifest, ManifestError, load_app_manifest
from buntime.pool.environment import PoolApps
from buntime.pool.pool import Again, Served, WorkerPool
from buntime.pool.state import PoolApp
from buntime.sensitive import is_sensitive
from buntime.web.static import inject_base_href, serve_static

_HEAD_SCAN_LIMIT = 64 * 1024
RESERVED_NAMES = frozenset({"api", "health", ".well-known"})


@frozen
class ResolvedApp:
    """An app version with its manifest read and its entrypoint found."""

    version: AppVersion
    manifest: AppManifest
    entrypoint: str
    attr: str | None
    stamp: tuple[tuple[int, int, int] | None, ...]

    @property
    def static(self) -> bool:
        return self.entrypoint.endswith(".html")


def _manifest_stamp(app_dir: str) -> tuple[tuple[int, int, int] | None, ...]:
    """
    What tells a changed manifest: each manifest file's inode, size and
    modification time (a replaced app's files are new, even when an
    archive gave them the old times).
    """
    stamps: list[tuple[int, int, int] | None] = []
    for name in ("manifest.yaml", "manifest.yml", "pyproject.toml"):
        try:
            found = os.stat(os.path.join(app_dir, name))
        except OSError:
            stamps.append(None)
        else:
            stamps.append((found.st_ino, found.st_size, found.st_mtime_ns))
    return tuple(stamps)


def _html(headers: Headers) -> bool:
    return (headers.get("content-type") or "").lower().startswith("text/html")


def _is_html(response: Response) -> bool:
    return _html(response.headers)


async def _inject_stream(body: Any, base: str) -> AsyncIterator[bytes]:
    """Inject the base into a streamed HTML body once its C{<head>} has arrived."""
    iterator = body.__aiter__()
    head = b""
    try:
        async for chunk in iterator:
            head += chunk
            if b"<head" in head.lower() and b">" in head[head.lower().index(b"<head") :]:
                break
            if len(head) > _HEAD_SCAN_LIMIT:
                break
        yield inject_base_href(head, base)
        async for chunk in iterator:
            yield chunk
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _with_base(response: Response, base: str) -> Response:
    """An HTML response with its C{<base href>}."""
    if not _is_html(response):
        return response
    headers = response.headers.remove("content-length")
    if isinstance(response.body, bytes):
        body: Any = inject_base_href(response.body, base)
    else:
        body = _inject_stream(response.body, base)
    return Response(response.status, headers, body, response.reason)


@define
class AppStep:
    """Serves worker apps; C{runtime_env} gives the RUNTIME_* values for workers."""

    catalog: AppCatalog
    pool: WorkerPool
    environ: Mapping[str, str]
    runtime_env: Callable[[], Mapping[str, str]]
    body_size_default: int
    body_size_max: int
    production: bool = False
    homepage: str | None = None
    reserved: frozenset[str] = RESERVED_NAMES
    """First path segments that never name an app (the core API's, /health, /.well-known)."""
    clock: IReactorTime | None = None
    recheck_seconds: float = 1.0
    _apps: dict[str, ResolvedApp] = field(factory=dict)
    _checked: dict[str, float] = field(factory=dict)
    _read_at: dict[str, int] = field(factory=dict)
    """The catalog's L{AppCatalog.changes} when each app's manifest was last read."""
    _pool_apps: dict[str, tuple[ResolvedApp, PoolApp]] = field(factory=dict)
    _infos: dict[str, tuple[ResolvedApp, AppInfo]] = field(factory=dict)
    _identified: (
        tuple[str, tuple[AppVersion, str, str] | Response | None, ResolvedApp | None] | None
    ) = None
    """The last path L{identify} looked at (the object itself) and what it found."""
    _builder: PoolApps = field(init=False)

    @_builder.default
    def _make_builder(self) -> PoolApps:
        return PoolApps(self.environ, self.runtime_env)

    def load(self, version: AppVersion) -> ResolvedApp:
        """
        The app at C{version}, its manifest re-read only when it changed
        (looked at no more than once every C{recheck_seconds}), or at once
        when the runtime changed the apps' files (an upload, a delete, a
        reload: the catalog counts them): a file's times alone cannot tell,
        they are as coarse as the kernel's clock tick.
        """
        cached = self._apps.get(version.dir)
        now = self.clock.seconds() if self.clock is not None else None
        changes = self.catalog.changes
        current = self._read_at.get(version.dir) == changes
        if (
            current
            and cached is not None
            and (cached.version is version or cached.version == version)
            and now is not None
            and now - self._checked.get(version.dir, float("-inf")) < self.recheck_seconds
        ):
            return cached
        stamp = _manifest_stamp(version.dir)
        if now is not None:
            self._checked[version.dir] = now
        same = cached is not None and cached.stamp == stamp and cached.version == version
        if current and same and cached is not None:
            return cached
        label = f"{version.name}@{version.version}"
        manifest, warnings, (entrypoint, attr) = self._read(version.dir, label)
        self._read_at[version.dir] = changes
        if (
            same
            and cached is not None
            and (cached.manifest, cached.entrypoint, cached.attr) == (manifest, entrypoint, attr)
        ):
            # another app changed, not this one: it stays the same object
            # (and what is made from it once, its pool app say, too)
            return cached
        for warning in warnings:
            log("warn", "buntime:apps:manifest-warning", warning, app=label)
        loaded = ResolvedApp(version, manifest, entrypoint, attr, stamp)
        self._apps[version.dir] = loaded
        return loaded

    def check(self, app_dir: str, label: str) -> None:
        """
        Read the app in C{app_dir} as serving it would (an upload is checked
        so before it replaces anything).

        @raise ManifestError: its manifest is invalid.
        @raise EntrypointError: it has no entrypoint that can be served.
        """
        self._read(app_dir, label)

    def _read(
        self, app_dir: str, label: str
    ) -> tuple[AppManifest, list[str], tuple[str, str | None]]:
        """The app's manifest, its warnings, and its entrypoint file and attribute."""
        manifest, warnings = load_app_manifest(
            app_dir,
            environ=self.environ,
            body_size_default=self.body_size_default,
            body_size_max=self.body_size_max,
            app_label=label,
            secret=is_sensitive,  # a secret reaches a worker only by a name envAllow lists
        )
        return manifest, warnings, resolve(app_dir, manifest.entrypoint)

    def _cached_pool_app(self, loaded: ResolvedApp) -> PoolApp:
        """The pool's view of C{loaded}, built once per manifest version."""
        cached = self._pool_apps.get(loaded.version.dir)
        if cached is not None and cached[0] is loaded:
            return cached[1]
        version = loaded.version
        app = self._builder.build(
            dir=version.dir,
            name=version.name,
            version=version.version,
            manifest=loaded.manifest,
            entrypoint=loaded.entrypoint + (f":{loaded.attr}" if loaded.attr else ""),
        )
        self._pool_apps[loaded.version.dir] = (loaded, app)
        return app

    def body_limit_for(self, path: str) -> int:
        """The request body limit for C{path}: its app's C{maxBodySize}, else the default."""
        parts = split_app_path(path)
        if parts is not None:
            try:
                version = self.catalog.resolve(parts[0], parts[1])
                if version is not None:
                    return self.load(version).manifest.max_body_size
            except (InvalidRange, ManifestError, EntrypointError):
                pass
        return self.body_size_default

    may_decline: ClassVar[bool] = False
    """A request it claims, it answers (see L{buntime.web.frontdoor.Step})."""

    def __call__(self, request: Request, fields: dict[str, Any]) -> Awaitable[Response] | None:
        """
        C{None} at once when C{request} names no app, else an awaitable of
        the app's answer (or of a 400 for a bad version range).
        """
        found, loaded = self._found(request.path)
        if found is None:
            return None
        if isinstance(found, Response):
            return succeed(found)
        version, base, rest = found
        fields["app"] = f"{version.name}@{version.version}"
        answer = self._answer(version, request, base, rest, fields, loaded, again=True)
        return answer if isinstance(answer, Deferred) else succeed(answer)

    def _again(
        self,
        refusal: Response,
        request: Request,
        base: str,
        served: Served | None,
        own: str | None = None,
    ) -> Response | Deferred[Response]:
        """
        A request whose app was retired (replaced or removed) while it
        waited for a worker (C{request} as the pool has it: the path inside
        the app mounted at C{base}; C{own}: the app's own base, when a
        plugin mounted it elsewhere), routed anew, once: the app's copy
        there now answers it, as it would a request that came now (its base
        injected, or not, as the first copy's manifest said).  When there
        is none, or it is no longer an app with workers: C{refusal}, the
        503 C{APP_RETIRED}.
        """
        found = self._find((base if own is None else own) + request.path)
        if found is None or isinstance(found, Response):
            return refusal
        version, base, rest = found
        if request.mount is not None:
            base = request.mount
        if not os.path.isdir(version.dir):  # removed by hand: the catalog has not looked yet
            return refusal
        try:
            loaded = self.load(version)
        except (ManifestError, EntrypointError):
            return refusal
        if loaded.static:
            return refusal
        return self.pool.reroute(
            self._cached_pool_app(loaded), request.with_path(rest), base, served
        )

    def _find(self, path: str) -> tuple[AppVersion, str, str] | Response | None:
        """The app version C{path} names, its base and the rest; a 400 for a bad range."""
        parts = split_app_path(path)
        if parts is None:
            return None
        name, spec, base, rest = parts
        if name in self.reserved:
            return None
        try:
            version = self.catalog.resolve(name, spec)
        except InvalidRange as error:
            return Response.error(400, "INVALID_VERSION_RANGE", str(error))
        if version is None:
            return self._no_such_version(name, spec)
        return version, base, rest

    def _no_such_version(self, name: str, spec: str | None) -> Response | None:
        """A 404 listing the versions of C{name} that exist, when some do (else C{None})."""
        existing = self.catalog.versions(name)
        if spec is None or not existing:
            return None
        listed = ", ".join(ordered_versions(existing))
        return Response.error(
            404,
            "VERSION_NOT_FOUND",
            f"No version of {name} matches {spec!r}; versions that exist: {listed}",
            {"x-not-found": "true"},
        )

    def _found(
        self, path: str
    ) -> tuple[tuple[AppVersion, str, str] | Response | None, ResolvedApp | None]:
        """
        L{_find} for C{path}, or what L{identify} found (and loaded) for the
        very same path object a moment ago (the request its plugin hooks let
        through unchanged): a request's app is worked out once, hooks or not.
        """
        made = self._identified
        if made is not None and made[0] is path:
            self._identified = None
            return made[1], made[2]
        return self._find(path), None

    def identify(self, path: str) -> tuple[AppInfo, str] | None:
        """The app C{path} addresses and the path inside it, for plugin hooks."""
        found = self._find(path)
        self._identified = (path, found, None)  # for the app step of the same request (L{_found})
        if found is None or isinstance(found, Response):
            return None
        version, _, rest = found
        try:
            loaded = self.load(version)
        except (ManifestError, EntrypointError):
            return None
        self._identified = (path, found, loaded)
        cached = self._infos.get(version.dir)
        if cached is None or cached[0] is not loaded:
            info = AppInfo(version.name, version.version, version.dir, loaded.manifest.raw)
            cached = self._infos[version.dir] = (loaded, info)
        return cached[1], rest

    def serve(
        self,
        version: AppVersion,
        request: Request,
        base: str,
        rest: str,
        fields: dict[str, Any] | None = None,
    ) -> Deferred[Response]:
        """
        Answer C{request} from the app at C{version} mounted at C{base} (a
        Deferred); the worker's id goes into the log C{fields}.
        """
        answer = self._answer(version, request, base, rest, fields)
        return answer if isinstance(answer, Deferred) else succeed(answer)

    def _answer(
        self,
        version: AppVersion,
        request: Request,
        base: str,
        rest: str,
        fields: dict[str, Any] | None,
        loaded: ResolvedApp | None = None,
        again: bool = False,
    ) -> Response | Deferred[Response]:
        """
        L{serve}: an answer known at once (an error, a static file), or the
        pool's Deferred (C{loaded}: the app at C{version}, when just loaded).
        With C{again}, a request whose app is retired while it waits is
        routed anew (L{_again}).  The app is told its base is the request's
        C{mount} when a plugin gave one (a virtual host's app is at its
        host's root), else C{base}.
        """
        own, mount = base, request.mount
        if mount is not None:
            base = mount  # what the app is told (its own still finds it: L{_again})
        try:
            if loaded is None:
                loaded = self.load(version)
        except ManifestError as error:
            return Response.error(500, "INVALID_MANIFEST", str(error))
        except EntrypointError as error:
            label = f"{version.name}@{version.version}"
            return Response.error(500, "INVALID_ENTRYPOINT", f"{label}: {error}")
        if loaded.static:
            if request.method not in ("GET", "HEAD"):
                refused = Response.error(
                    405, "METHOD_NOT_ALLOWED", "Static apps answer GET and HEAD"
                )
                return refused.with_header("allow", "GET, HEAD")
            return serve_static(
                version.dir,
                rest,
                base,
                loaded.manifest.inject_base is not False,  # static apps: unless told not to
                request_headers=request.headers,
                nested_versions=version.layout == "simple",  # its nested versions are apps
            )
        # the worker gives the app its x-base (see buntime.pool.child.protocol)
        inner = request.with_path(rest)
        served = None if fields is None else partial(fields.__setitem__, "worker_id")
        anew: Again | None = None
        if again:
            anew = self._again if mount is None else partial(self._again, own=own)
        response = self.pool.handle(self._cached_pool_app(loaded), inner, base, served, anew)
        if loaded.manifest.inject_base:  # apps with code: only when the manifest asks
            response.addCallback(_with_base, base)
        return response

    def serve_homepage(
        self, request: Request, fields: dict[str, Any]
    ) -> Awaitable[Response] | None:
        """
        With C{RUNTIME_HOMEPAGE} set, its app serves C{/} and every navigation
        request nothing else claimed (so a single-page app can route it).
        """
        if self.homepage is None or request.method not in ("GET", "HEAD"):
            return None
        headers = request.headers
        # a frame's missing page gets the 404, not the home page (a shell inside a shell)
        navigation = headers.get("sec-fetch-dest") in (None, "document") and (
            headers.get("sec-fetch-mode") == "navigate"
            or "text/html" in (headers.get("accept") or "")
        )
        if request.path != "/" and not navigation:
            return None
        prefix = "/" + self.homepage.strip("/")
        return self(request.with_path(prefix + request.path), fields)
