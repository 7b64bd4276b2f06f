"""
C{@buntime/plugin-gateway}: rate limiting, CORS, a GET response cache and
shell routing, in one C{on_request} and one C{on_response} hook; its stats
at C{/gateway/api/stats}, cache invalidation at C{/gateway/api/cache/invalidate}
and a stats page at C{/gateway/}.

Each part is off until its settings turn it on (C{rateLimit.requests},
C{cors.origins}, C{cache.ttl}, C{shell.app}).  Per request, each part that
is on costs a few dict and string operations: no regex, no scan of what it
remembers, header pairs worked out ahead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from attrs import define, field, frozen
from klein import Klein
from zope.interface import implementer

from buntime.builtins._paths import PathSet
from buntime.builtins.gateway.cache import CacheSettings, ResponseCache
from buntime.builtins.gateway.cors import Cors, CorsSettings
from buntime.builtins.gateway.ratelimit import (
    RateLimiter,
    RateLimitSettings,
    client_ip,
    key_function,
)
from buntime.builtins.gateway.shell import Shell, ShellSettings
from buntime.http import AppInfo, Request, Response, json_answer, json_error, page_answer
from buntime.interfaces import IBuntimePlugin, IPluginContext

_UI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui", "index.html")


@frozen
class GatewaySettings:
    """The gateway's settings, checked when it loads (a bad one stops the runtime)."""

    rate_limit: RateLimitSettings | None = None
    cors: CorsSettings | None = None
    cache: CacheSettings | None = None
    shell: ShellSettings | None = None

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> GatewaySettings:
        def section(name: str) -> Any:
            value = config.get(name)
            if value is not None and not isinstance(value, Mapping | str):
                raise ValueError(f"{name} must be a map of settings, not {value!r}")
            return value

        return cls(
            rate_limit=RateLimitSettings.parse(section("rateLimit")),
            cors=CorsSettings.parse(section("cors")),
            cache=CacheSettings.parse(section("cache")),
            shell=ShellSettings.parse(section("shell")),
        )


@implementer(IBuntimePlugin)
@define
class GatewayPlugin:  # type: ignore[misc]  # every IBuntimePlugin member is optional
    """The gateway: its parts are built in C{on_init}, on the runtime's clock."""

    settings: GatewaySettings = field(factory=GatewaySettings)
    limiter: RateLimiter | None = None
    cors: Cors | None = None
    cache: ResponseCache | None = None
    shell: Shell | None = None
    _key: Callable[[Request], str] = client_ip
    _limit: tuple[str, str] = ("x-ratelimit-limit", "0")
    _rate_exclude: PathSet | None = None
    """The paths rate limiting leaves alone (C{None}: none, so not even a look)."""
    _cors_exclude: PathSet | None = None
    context: IPluginContext | None = None

    routes = Klein()

    def on_init(self, ctx: IPluginContext) -> None:
        self.context = ctx
        settings = self.settings
        clock = ctx.reactor
        if (rate := settings.rate_limit) is not None:
            self.limiter = RateLimiter(rate.requests, rate.window, clock, rate.max_clients)
            self._key = key_function(rate.key_by, ctx.trusted_proxies)
            self._limit = ("x-ratelimit-limit", str(rate.requests))
            self._rate_exclude = rate.exclude or None
        if settings.cors is not None:
            self.cors = Cors(settings.cors)
            self._cors_exclude = settings.cors.exclude or None
        if settings.cache is not None:
            self.cache = ResponseCache(settings.cache, clock)
        if settings.shell is not None:
            self.shell = Shell.build(settings.shell, ctx.plugin_bases)
        # a plugin that answers in on_request (the proxy) labels its answers with it
        ctx.register_service("gateway", self)
        ctx.logger.info("Gateway ready", **self._summary())

    def label(self, request: Request, response: Response) -> Response:
        """
        C{response} with the rate-limit and CORS headers the gateway gives an
        answer to C{request}: for a plugin loaded after the gateway whose
        C{on_request} answers (the proxy), as no C{on_response} hook sees
        such an answer.
        """
        pairs = self._headers(request, response)
        return response.with_headers(pairs) if pairs else response

    # -- the request hooks -------------------------------------------------------

    def on_request(self, request: Request, app: AppInfo | None) -> Request | Response | None:
        cors = self.cors
        if cors is not None and request.method == "OPTIONS":
            answer = self._preflight(cors, request)
            if answer is not None:
                return answer
        limiter = self.limiter
        excluded = self._rate_exclude
        if limiter is not None and (excluded is None or request.path not in excluded):
            if limiter.hit(self._key(request)) < 0:
                return self._too_many(limiter, request)
        changed = None
        if self.shell is not None:
            changed = self.shell.route(request)
            request = changed or request
        cache = self.cache
        if cache is not None and cache.applies(request):
            hit = cache.lookup(request)
            if hit is not None:
                # an on_request answer skips on_response hooks: this one's headers now
                return hit.with_headers(self._headers(request, hit))
        return changed

    def on_response(
        self, response: Response, app: AppInfo | None, request: Request | None = None
    ) -> Response:
        if request is None:
            return response
        pairs = self._headers(request, response)
        cache = self.cache
        if cache is not None and cache.applies(request):
            cache.store(request, response)
            pairs.append(("x-cache", "MISS"))
        return response.with_headers(pairs) if pairs else response

    def _preflight(self, cors: Cors, request: Request) -> Response | None:
        headers = request.headers
        origin = headers.get("origin")
        if (
            origin is None
            or "access-control-request-method" not in headers
            or request.path in cors.settings.exclude
        ):
            return None
        return cors.preflight(request, origin)

    def _too_many(self, limiter: RateLimiter, request: Request) -> Response:
        wait = str(limiter.reset_in())
        refusal = Response.error(
            429,
            "RATE_LIMITED",
            f"Too many requests: at most {limiter.requests} per {limiter.window:g}s",
            {"retry-after": wait},
        )
        return refusal.with_headers(self._headers(request, refusal))

    def _headers(self, request: Request, response: Response) -> list[tuple[str, str]]:
        """The rate-limit and CORS headers of the answer C{response} to C{request}."""
        pairs: list[tuple[str, str]]
        limiter = self.limiter
        excluded = self._rate_exclude
        if limiter is not None and (excluded is None or request.path not in excluded):
            left, reset = limiter.remaining(self._key(request))
            pairs = [
                self._limit,
                ("x-ratelimit-remaining", str(left)),
                ("x-ratelimit-reset", str(reset)),
            ]
        else:
            pairs = []
        cors = self.cors
        excluded = self._cors_exclude
        if cors is not None and (excluded is None or request.path not in excluded):
            origin = request.headers.get("origin")
            if origin is not None and (allowed := cors.headers(origin)) is not None:
                pairs.extend(allowed)
            if cors.varies:
                pairs.append(_vary_origin(response))
        return pairs

    # -- its API and page ---------------------------------------------------------

    def _summary(self) -> dict[str, Any]:
        return {
            "rateLimit": self.limiter is not None,
            "cors": self.cors is not None,
            "cache": self.cache is not None,
            "shell": self.shell.base if self.shell is not None else None,
        }

    def stats(self) -> dict[str, Any]:
        """What C{GET /gateway/api/stats} answers."""
        found: dict[str, Any] = {"enabled": self._summary()}
        if (limiter := self.limiter) is not None:
            rate = self.settings.rate_limit
            assert rate is not None
            found["rateLimit"] = {
                "requests": limiter.requests,
                "windowSeconds": limiter.window,
                "keyBy": rate.key_by,
                "clients": limiter.clients,
                "maxClients": limiter.max_clients,
                "limited": limiter.limited,
                "forgotten": limiter.forgotten,
            }
        if (cors := self.cors) is not None:
            found["cors"] = {
                "origins": list(cors.settings.origins),
                "credentials": cors.settings.credentials,
                "preflights": cors.preflights,
                "refused": cors.refused,
            }
        if (cache := self.cache) is not None:
            looked = cache.hits + cache.misses
            found["cache"] = {
                "entries": len(cache),
                "maxEntries": cache.settings.max_entries,
                "ttlSeconds": cache.settings.ttl,
                "hits": cache.hits,
                "misses": cache.misses,
                "hitRate": round(cache.hits / looked, 4) if looked else 0.0,
                "stores": cache.stores,
                "evictions": cache.evictions,
                "invalidated": cache.invalidated,
            }
        if (shell := self.shell) is not None:
            found["shell"] = {"base": shell.base, "routed": shell.routed}
        return found

    @routes.route("/", methods=["GET", "HEAD"])
    def page(self, request: Any) -> bytes:
        return page_answer(request, _UI)

    @routes.route("/api/stats", methods=["GET", "HEAD"])
    def stats_route(self, request: Any) -> bytes:
        return json_answer(request, self.stats())

    @routes.route("/api/cache/invalidate", methods=["POST"])
    def invalidate(self, request: Any) -> bytes:
        assert self.context is not None
        refused: bytes | None = self.context.refuse_change(request)
        if refused is not None:
            return refused
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if kind != b"application/json":
            # a browser cannot send this cross-site without a preflight
            return json_error(request, 415, "UNSUPPORTED_MEDIA_TYPE", 'Send JSON: {"pattern": ...}')
        try:
            body = json.loads(request.content.read() or b"{}")
        except ValueError:
            return json_error(request, 400, "INVALID_JSON", "The body is not JSON")
        pattern = body.get("pattern") if isinstance(body, dict) else None
        if not isinstance(pattern, str) or not pattern:
            return json_error(
                request, 400, "MISSING_PARAMS", 'Give a "pattern" (a glob like /app/*, or *)'
            )
        if self.cache is None:
            return json_error(request, 409, "CACHE_DISABLED", "The gateway's cache is off")
        return json_answer(
            request, {"invalidated": self.cache.invalidate(pattern), "pattern": pattern}
        )


_VARY_ORIGIN = ("vary", "Origin")


def _vary_origin(response: Response) -> tuple[str, str]:
    """C{Vary} with C{Origin} added to what the answer varies on already."""
    headers = response.headers
    if headers.get("vary") is None:  # the usual: one look, no list
        return _VARY_ORIGIN
    joined = ", ".join(headers.getall("vary"))
    if "origin" in joined.lower():
        return ("vary", joined)
    return ("vary", joined + ", Origin")


def plugin(config: Mapping[str, Any]) -> GatewayPlugin:
    """The factory the loader calls with the manifest's settings."""
    return GatewayPlugin(GatewaySettings.parse(config))
