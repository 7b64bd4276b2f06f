"""
The gateway built-in against its objects, on a L{task.Clock}: rate-limit
windows and bounded memory, CORS, the response cache (expiry, LRU,
Cache-Control, Vary, invalidation), shell routing, and its API through the
plugin service with an override manifest.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from test_plugins_service import make_service
from test_plugins_support import write_plugin
from twisted.internet.task import Clock

from buntime.builtins._paths import PathSet, app_base
from buntime.builtins.gateway.cache import CacheSettings, ResponseCache
from buntime.builtins.gateway.cors import Cors, CorsSettings
from buntime.builtins.gateway.plugin import GatewayPlugin, GatewaySettings, plugin
from buntime.builtins.gateway.ratelimit import (
    RateLimiter,
    RateLimitSettings,
    client_ip,
    key_function,
)
from buntime.builtins.gateway.shell import Shell, ShellSettings
from buntime.http import Request, Response
from buntime.plugins.discovery import BUILTINS_DIR

GATEWAY = "@buntime/plugin-gateway"


def get(path: str = "/app/x", headers: dict[str, str] | None = None, **kwargs) -> Request:
    return Request("GET", path, headers or {}, remote_addr=kwargs.get("ip", "10.0.0.1"))


# -- paths ------------------------------------------------------------------------------


def test_path_sets_match_paths_and_what_is_under_them():
    paths = PathSet.parse(["/health", "/static*", "/api/"], "x")
    assert "/health" in paths and "/health/live" in paths
    assert "/healthy" not in paths
    assert "/static.css" in paths and "/staticfiles/a" in paths
    assert "/api" in paths and "/api/x" in paths
    assert "/other" not in paths
    assert not PathSet.parse([], "x")
    with pytest.raises(ValueError, match="x: 'health' is not a path"):
        PathSet.parse(["health"], "x")


def test_app_base_encodes_the_range():
    assert app_base("site") == "/site"
    assert app_base("site@^1.2") == "/site@%5E1.2"
    assert app_base("@acme/site@1") == "/@acme/site@1"
    with pytest.raises(ValueError, match="use name or name@range"):
        app_base("@")


# -- rate limiting ------------------------------------------------------------------------


def test_requests_per_window_then_a_fresh_window(clock: Clock):
    limiter = RateLimiter(3, 60.0, clock)
    clock.advance(30)  # windows are aligned to the clock: this one ends at 60
    assert [limiter.hit("a") for _ in range(4)] == [2, 1, 0, -1]
    assert limiter.hit("b") == 2  # each client has its own count
    assert limiter.limited == 1
    assert limiter.remaining("a") == (0, 30)
    assert limiter.reset_in() == 30
    clock.advance(29.5)
    assert limiter.reset_in() == 1
    assert limiter.hit("a") == -2
    clock.advance(0.5)  # the next window
    assert limiter.remaining("a") == (3, 60)
    assert limiter.hit("a") == 2
    assert limiter.reset_in() == 60


def test_memory_is_bounded_with_100000_clients(clock: Clock):
    limiter = RateLimiter(5, 60.0, clock, max_clients=10_000)
    for number in range(100_000):
        limiter.hit(f"client-{number}")
    assert limiter.clients == 10_000
    assert limiter.forgotten == 90_000
    # the most recent clients are still counted; the first ones were forgotten
    assert limiter.remaining("client-99999")[0] == 4
    assert limiter.remaining("client-0")[0] == 5
    clock.advance(60)
    assert limiter.clients == 0


def test_keys_by_ip_header_and_api_key():
    assert client_ip(get(ip="10.1.1.1")) == "10.1.1.1"
    forwarded = get(headers={"x-forwarded-for": "203.0.113.9, 10.0.0.2"})
    assert client_ip(forwarded) == "10.0.0.2"  # the address the trusted proxy saw
    assert client_ip(forwarded, {"10.0.0.2"}) == "203.0.113.9"  # behind two trusted ones
    assert client_ip(forwarded, None) == "203.0.113.9"  # every peer trusted
    by_tenant = key_function("header:X-Tenant")
    assert by_tenant(get(headers={"x-tenant": "acme"})) == "k:acme"
    assert by_tenant(get(ip="10.1.1.1")) == "ip:10.1.1.1"
    by_key = key_function("apikey")
    assert by_key(get(headers={"x-api-key": "s3cret"})) == "k:s3cret"
    assert by_key(get(headers={"authorization": "Bearer tok"})) == "k:tok"
    assert by_key(get(headers={"authorization": "Basic xyz"}, ip="10.2.2.2")) == "ip:10.2.2.2"


def test_a_client_behind_a_trusted_proxy_cannot_pick_its_own_rate_limit_key(clock: Clock):
    """
    A trusted proxy that appends to X-Forwarded-For (nginx's usual
    C{$proxy_add_x_forwarded_for}) passes on whatever the client wrote
    first: the client is the last address no trusted proxy added (as
    nginx's C{real_ip_recursive}, Envoy's C{xff_num_trusted_hops}).
    """
    found = gateway(clock, rateLimit={"requests": 2, "window": "1m"})

    def via_nginx(forged: str) -> Request:
        forwarded = {"x-forwarded-for": f"{forged}, 198.51.100.7"}
        return Request("GET", "/app/x", forwarded, remote_addr="127.0.0.1")

    answers = [found.on_request(via_nginx(f"203.0.113.{n}"), None) for n in range(5)]
    assert [isinstance(a, Response) and a.status == 429 for a in answers] == [
        False,
        False,
        True,
        True,
        True,
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"requests": -1}, "rateLimit.requests must be a positive integer"),
        ({"requests": 5, "window": "soon"}, "invalid duration"),
        ({"requests": 5, "keyBy": "cookie"}, "rateLimit.keyBy must be one of"),
        ({"requests": 5, "maxClients": 0}, "rateLimit.maxClients must be a positive integer"),
        ({"requests": 5, "excludePaths": ["x"]}, "rateLimit.excludePaths"),
    ],
)
def test_bad_rate_limit_settings(value, message):
    with pytest.raises(ValueError, match=message):
        RateLimitSettings.parse(value)


def test_rate_limit_off_without_requests():
    assert RateLimitSettings.parse(None) is None
    assert RateLimitSettings.parse({"window": "1m"}) is None


# -- CORS -----------------------------------------------------------------------------------


def preflight(origin: str, path: str = "/app/x", **headers: str) -> Request:
    return Request(
        "OPTIONS",
        path,
        {"origin": origin, "access-control-request-method": "PUT", **headers},
    )


def test_cors_for_listed_origins():
    cors = Cors(CorsSettings.parse({"origins": ["https://a.example"], "exposeHeaders": ["x-id"]}))
    assert cors.varies
    assert cors.headers("https://a.example") == (
        ("access-control-allow-origin", "https://a.example"),
        ("access-control-expose-headers", "x-id"),
    )
    assert cors.headers("https://evil.example") is None
    answer = cors.preflight(
        preflight("https://a.example", **{"access-control-request-headers": "x-token"}),
        "https://a.example",
    )
    assert answer.status == 204
    assert answer.headers["access-control-allow-origin"] == "https://a.example"
    assert answer.headers["access-control-allow-methods"] == "GET, HEAD, PUT, PATCH, POST, DELETE"
    assert answer.headers["access-control-allow-headers"] == "x-token"
    assert answer.headers["access-control-max-age"] == "600"
    assert "Origin" in answer.headers["vary"]
    refused = cors.preflight(preflight("https://evil.example"), "https://evil.example")
    assert refused.status == 403
    assert json.loads(refused.body)["error"]["code"] == "CORS_ORIGIN_DENIED"
    assert "Origin" in refused.headers["vary"]  # it depends on the origin too
    assert (cors.preflights, cors.refused) == (1, 1)


def test_cors_any_origin_and_credentials():
    anyone = Cors(CorsSettings.parse({"origins": "*"}))
    assert not anyone.varies
    assert anyone.headers("https://x.example") == (("access-control-allow-origin", "*"),)
    # "*" cannot carry credentials: the origin is named, and answers vary by it
    trusted = Cors(CorsSettings.parse({"origins": ["*"], "credentials": True, "maxAge": 5}))
    assert trusted.varies
    assert trusted.headers("https://x.example") == (
        ("access-control-allow-origin", "https://x.example"),
        ("access-control-allow-credentials", "true"),
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"origins": ["example.com"]}, "is not an origin like https://example.com"),
        ({"origins": "*", "credentials": "yes"}, "cors.credentials must be true or false"),
        ({"origins": "*", "maxAge": -1}, "cors.maxAge must be a number of seconds"),
        ({"origins": 5}, "cors.origins must be a list of strings"),
    ],
)
def test_bad_cors_settings(value, message):
    with pytest.raises(ValueError, match=message):
        CorsSettings.parse(value)


# -- the response cache -------------------------------------------------------------------------


def cache_of(clock: Clock, **settings) -> ResponseCache:
    return ResponseCache(CacheSettings.parse({"ttl": "10s", **settings}), clock)


def test_cache_hit_then_expiry(clock: Clock):
    cache = cache_of(clock)
    request = get("/app/x?q=1", {"host": "a.test"})
    assert cache.lookup(request) is None
    assert cache.store(request, Response.text("one"))
    clock.advance(4)
    hit = cache.lookup(request)
    assert hit is not None
    assert (hit.body, hit.headers["x-cache"], hit.headers["age"]) == (b"one", "HIT", "4")
    assert cache.lookup(get("/app/x?q=2", {"host": "a.test"})) is None  # another query
    assert cache.lookup(get("/app/x?q=1", {"host": "b.test"})) is None  # another host
    clock.advance(6)
    assert cache.lookup(request) is None  # expired
    assert len(cache) == 0
    assert (cache.hits, cache.misses, cache.stores) == (1, 4, 1)


def test_the_cache_s_memory_is_bounded_however_many_urls_are_asked_for(clock: Clock):
    """
    maxEntries alone bounds entries, not bytes: with the defaults (1000
    entries of up to 1 MB) a client asking for /big?1, /big?2... made the
    runtime keep a gigabyte.  The bodies kept are bounded in all
    (maxSize, 64 MB by default), the least recently used dropped first.
    """
    cache = cache_of(clock)
    body = b"x" * (1024 * 1024 - 1024)
    for number in range(1000):
        cache.store(get(f"/app/big?{number}"), Response(200, [], body))
    kept = sum(len(entry.response.body) for entry in cache._entries.values())
    assert kept <= 64 * 1024 * 1024
    assert cache.lookup(get("/app/big?999")) is not None  # the most recent are kept
    assert cache.lookup(get("/app/big?0")) is None


def test_cache_drops_the_least_recently_used(clock: Clock):
    cache = cache_of(clock, maxEntries=2)
    a, b, c = (get(f"/app/{name}") for name in "abc")
    cache.store(a, Response.text("a"))
    cache.store(b, Response.text("b"))
    assert cache.lookup(a) is not None  # a is now the most recently used
    cache.store(c, Response.text("c"))
    assert cache.lookup(b) is None
    assert cache.lookup(a) is not None and cache.lookup(c) is not None
    assert (len(cache), cache.evictions) == (2, 1)


@pytest.mark.parametrize(
    "headers",
    [
        {"cache-control": "no-store"},
        {"cache-control": "private, max-age=60"},
        {"cache-control": "no-cache"},
        {"cache-control": "max-age=0"},
        {"set-cookie": "session=1"},
        {"vary": "*"},
    ],
)
def test_cache_keeps_no_answer_marked_so(clock: Clock, headers):
    cache = cache_of(clock)
    assert not cache.store(get(), Response.text("x", headers=headers))
    assert cache.lookup(get()) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"expires": "0"},
        {"expires": "Thu, 01 Jan 1970 00:00:00 GMT"},
        {"date": "Mon, 07 Dec 2026 10:00:00 GMT", "expires": "Mon, 07 Dec 2026 10:00:00 GMT"},
    ],
)
def test_cache_keeps_no_answer_already_expired(clock: Clock, headers):
    """
    Without Cache-Control, Expires gives the answer's freshness (RFC 9111
    §4.2.1); one in the past, or invalid (C{0}), means already stale (§5.3).
    """
    cache = cache_of(clock)
    assert not cache.store(get(), Response.text("x", headers=headers))
    assert cache.lookup(get()) is None


def test_a_request_s_max_age_is_honoured(clock: Clock):
    """
    A request's C{Cache-Control: max-age=N} (a browser's reload sends
    C{max-age=0}) takes no answer older than N seconds (RFC 9111 §5.2.1.1).
    """
    cache = cache_of(clock)
    cache.store(get(), Response.text("x"))
    clock.advance(5)
    assert cache.lookup(get(headers={"cache-control": "max-age=0"})) is None
    assert cache.lookup(get(headers={"cache-control": "max-age=4"})) is None
    assert cache.lookup(get(headers={"cache-control": "max-age=5"})) is not None


def test_cache_keeps_only_whole_small_200s(clock: Clock):
    cache = cache_of(clock, maxEntrySize="4b")

    async def stream():
        yield b"x"

    assert not cache.store(get(), Response(200, {}, stream()))
    assert not cache.store(get(), Response.text("too long"))
    assert not cache.store(get(), Response.text("gone", status=404))
    assert not cache.store(get(headers={"cache-control": "no-store"}), Response.text("x"))
    assert cache.store(get(), Response.text("ok"))


def test_cache_max_age_shortens_the_ttl(clock: Clock):
    cache = cache_of(clock)
    cache.store(get(), Response.text("x", headers={"cache-control": "public, max-age=2"}))
    clock.advance(2)
    assert cache.lookup(get()) is None


def test_cache_honours_vary(clock: Clock):
    cache = cache_of(clock)
    english = get(headers={"accept-language": "en"})
    cache.store(english, Response.text("hello", headers={"vary": "Accept-Language"}))
    assert cache.lookup(get(headers={"accept-language": "en"})) is not None
    assert cache.lookup(get(headers={"accept-language": "pt"})) is None
    assert cache.lookup(get()) is None


def test_cache_applies_to_gets_not_excluded_without_credentials(clock: Clock):
    cache = cache_of(clock, excludePaths=["/app/live"])
    assert cache.applies(get())
    assert not cache.applies(Request("POST", "/app/x"))
    assert not cache.applies(get("/app/live/now"))
    assert not cache.applies(get(headers={"authorization": "Bearer x"}))
    cache.store(get(), Response.text("x"))
    assert cache.lookup(get(headers={"cache-control": "no-cache"})) is None


@pytest.mark.parametrize(
    "asked", ["no-cache", "no-store", "No-Cache", "NO-STORE", "max-age=0, no-store"]
)
def test_a_request_asking_for_a_fresh_answer_is_never_served_from_the_cache(clock: Clock, asked):
    cache = cache_of(clock)
    cache.store(get(), Response.text("kept"))
    assert cache.lookup(get(headers={"cache-control": asked})) is None
    assert not cache.store(get(headers={"cache-control": "No-Store"}), Response.text("x"))
    assert cache.lookup(get()) is not None  # the kept answer is still there for others


def test_cache_invalidation_by_pattern(clock: Clock):
    cache = cache_of(clock)
    for path in ("/app/a", "/app/b?x=1", "/other/c"):
        cache.store(get(path), Response.text(path))
    assert cache.invalidate("/app/*") == 2
    assert cache.lookup(get("/other/c")) is not None
    assert cache.invalidate("*") == 1
    assert (len(cache), cache.invalidated) == (0, 3)


def test_cache_off_without_ttl():
    assert CacheSettings.parse({"maxEntries": 5}) is None
    with pytest.raises(ValueError, match=r"cache\.maxEntries must be a positive integer"):
        CacheSettings.parse({"ttl": 5, "maxEntries": 0})


# -- shell routing ----------------------------------------------------------------------------


def navigate(path: str, dest: str | None = "document") -> Request:
    headers = {"sec-fetch-mode": "navigate"}
    if dest is not None:
        headers["sec-fetch-dest"] = dest
    return Request("GET", path + "?tab=1", headers)


def test_shell_serves_navigations_to_root_and_plugin_pages():
    shell = Shell.build(ShellSettings.parse("cpanel"), ["/metrics", "/logs"])
    assert shell.route(navigate("/")).url == "/cpanel/?tab=1"
    assert shell.route(navigate("/metrics")).url == "/cpanel/metrics?tab=1"
    assert shell.route(navigate("/logs/live", dest=None)).url == "/cpanel/logs/live?tab=1"
    # not the shell's: APIs, frames, fetches, other paths, other methods
    assert shell.route(navigate("/metrics/api/stats")) is None
    assert shell.route(navigate("/metrics/api")) is None
    assert shell.route(navigate("/metrics", dest="iframe")) is None
    assert shell.route(Request("GET", "/metrics", {"sec-fetch-mode": "cors"})) is None
    assert shell.route(navigate("/hello/")) is None
    assert shell.route(Request("POST", "/", {"sec-fetch-mode": "navigate"})) is None
    assert shell.routed == 3


def test_shell_excludes_and_ranges():
    settings = ShellSettings.parse({"app": "cpanel@^2", "excludes": ["/logs"]})
    shell = Shell.build(settings, ["/metrics", "/logs"])
    assert shell.route(navigate("/logs")) is None
    assert shell.route(navigate("/metrics")).path == "/cpanel@%5E2/metrics"
    assert ShellSettings.parse({}) is None


# -- the plugin object ------------------------------------------------------------------------


class Context:
    """What the gateway's on_init reads of its context."""

    def __init__(self, clock: Clock, bases=("/gateway", "/metrics")) -> None:
        self.reactor = clock
        self.base = "/gateway"
        self.plugin_bases = bases
        self.trusted_proxies = frozenset({"127.0.0.1", "::1"})  # RUNTIME_FORWARDED_ALLOW_IPS's
        self.logged: list[tuple[str, dict]] = []
        self.logger = self
        self.services: dict[str, object] = {}

    def register_service(self, name: str, service: object) -> None:
        self.services[name] = service

    def info(self, message: str, **fields) -> None:
        self.logged.append((message, fields))


def gateway(clock: Clock, **config) -> GatewayPlugin:
    found = plugin(config)
    found.on_init(Context(clock))  # type: ignore[arg-type]
    return found


def test_another_plugin_s_answer_is_labelled_through_the_gateway_service(clock: Clock):
    context = Context(clock)
    found = plugin({"rateLimit": {"requests": 2, "window": "10s"}, "cors": {"origins": "*"}})
    found.on_init(context)  # type: ignore[arg-type]
    assert context.services["gateway"] is found
    request = get(headers={"origin": "https://a.example"})
    assert found.on_request(request, None) is None  # counted; then the proxy answers it
    answer = found.label(request, Response.text("from upstream"))
    assert answer.headers["x-ratelimit-remaining"] == "1"
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.body == b"from upstream"
    assert "x-cache" not in answer.headers  # never kept: not the cache's


def test_the_hooks_limit_and_label_every_answer(clock: Clock):
    found = gateway(
        clock,
        rateLimit={"requests": 2, "window": "10s", "excludePaths": ["/health"]},
        cors={"origins": ["https://a.example"]},
    )
    request = get(headers={"origin": "https://a.example"})
    assert found.on_request(request, None) is None
    answer = found.on_response(Response.text("ok", headers={"vary": "Accept"}), None, request)
    assert answer.headers["x-ratelimit-limit"] == "2"
    assert answer.headers["x-ratelimit-remaining"] == "1"
    assert answer.headers["x-ratelimit-reset"] == "10"
    assert answer.headers["access-control-allow-origin"] == "https://a.example"
    assert answer.headers["vary"] == "Accept, Origin"
    assert found.on_request(request, None) is None
    clock.advance(3)
    refusal = found.on_request(request, None)
    assert isinstance(refusal, Response)
    assert refusal.status == 429
    assert json.loads(refusal.body)["error"]["code"] == "RATE_LIMITED"
    assert refusal.headers["retry-after"] == "7"
    assert refusal.headers["x-ratelimit-remaining"] == "0"
    assert refusal.headers["x-ratelimit-reset"] == "7"
    assert refusal.headers["access-control-allow-origin"] == "https://a.example"
    # excluded paths are neither counted nor labelled
    assert found.on_request(get("/health"), None) is None
    plain = found.on_response(Response.text("ok"), None, get("/health"))
    assert "x-ratelimit-limit" not in plain.headers
    assert plain.headers["vary"] == "Origin"  # the answer depends on the origin all the same
    # an answer to a request the hooks did not see (a public route) in a new window
    clock.advance(60)
    public = found.on_response(Response.text("ok"), None, get("/public"))
    assert public.headers["x-ratelimit-remaining"] == "2"
    assert public.headers["x-ratelimit-reset"] == "7"
    # a response without its request (an older caller) is left as it is
    assert found.on_response(plain, None) is plain


def test_the_hooks_answer_preflights_and_from_the_cache(clock: Clock):
    found = gateway(clock, cors={"origins": "*"}, cache={"ttl": "1m"})
    answer = found.on_request(preflight("https://x.example"), None)
    assert isinstance(answer, Response) and answer.status == 204
    # an OPTIONS that is no preflight goes on
    assert found.on_request(Request("OPTIONS", "/app/x"), None) is None
    request = get(headers={"origin": "https://x.example"})
    assert found.on_request(request, None) is None
    missed = found.on_response(Response.text("fresh"), None, request)
    assert missed.headers["x-cache"] == "MISS"
    hit = found.on_request(request, None)
    assert isinstance(hit, Response)
    assert (hit.body, hit.headers["x-cache"]) == (b"fresh", "HIT")
    assert hit.headers["access-control-allow-origin"] == "*"
    stats = found.stats()
    assert stats["cache"]["hits"] == 1 and stats["cache"]["entries"] == 1
    assert stats["cors"]["preflights"] == 1
    assert "rateLimit" not in stats


def test_the_hooks_route_navigations_to_the_shell(clock: Clock):
    found = gateway(clock, shell={"app": "cpanel"})
    routed = found.on_request(navigate("/metrics"), None)
    assert isinstance(routed, Request) and routed.path == "/cpanel/metrics"
    # its own page too, as every plugin's (and as RUNTIME_HOMEPAGE's shell routing does)
    routed = found.on_request(navigate("/gateway/"), None)
    assert isinstance(routed, Request) and routed.path == "/cpanel/gateway/"
    assert found.on_request(navigate("/gateway/api/stats"), None) is None
    assert found.stats()["shell"] == {"base": "/cpanel", "routed": 2}


def test_everything_off_by_default(clock: Clock):
    found = gateway(clock)
    assert found.settings == GatewaySettings()
    assert found.on_request(get(), None) is None
    response = Response.text("x")
    assert found.on_response(response, None, get()) is response
    with pytest.raises(ValueError, match="cors must be a map of settings"):
        plugin({"cors": 5})


# -- through the plugin service -----------------------------------------------------------------


async def started(tmp_path, manifest: dict, clock: Clock | None = None):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "gateway", {"name": GATEWAY, "enabled": True, **manifest})
    service = make_service(plugins, builtins_dir=BUILTINS_DIR, reactor=clock or Clock())
    service.startService()
    await service.when_loaded()
    return service


@pytest_twisted.ensureDeferred
async def test_off_by_default(tmp_path):
    service = make_service(builtins_dir=BUILTINS_DIR)
    service.startService()
    await service.when_loaded()
    assert service.registry.get(GATEWAY) is None
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_enabled_by_its_variable(tmp_path):
    service = make_service(builtins_dir=BUILTINS_DIR, environ={"GATEWAY_ENABLED": "true"})
    service.startService()
    registry = await service.when_loaded()
    assert registry.get(GATEWAY) is not None
    stats = await registry.route(Request("GET", "/gateway/api/stats"))
    assert json.loads(stats.body) == {
        "enabled": {"rateLimit": False, "cors": False, "cache": False, "shell": None}
    }
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_enabled_by_a_manifest_with_its_stats_page_and_api(tmp_path):
    clock = Clock()
    service = await started(
        tmp_path, {"cache": {"ttl": "30s"}, "rateLimit": {"requests": 5}}, clock
    )
    registry = service.registry
    loaded = registry.get(GATEWAY)
    assert loaded is not None and loaded.base == "/gateway"
    assert loaded.context.plugin_bases == ("/gateway", "/metrics", "/logs")
    page = await registry.route(Request("GET", "/gateway/"))
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert b"api/stats" in page.body
    stats = await registry.route(Request("GET", "/gateway/api/stats"))
    body = json.loads(stats.body)
    assert body["enabled"] == {"rateLimit": True, "cors": False, "cache": True, "shell": None}
    assert body["rateLimit"]["requests"] == 5

    # the on_response hook is given the request: the answer is kept
    request = get("/app/x")
    assert registry.request_hooks(request, None, None) is request
    answered = registry.response_hooks(Response.text("x"), None, request)
    assert answered.headers["x-cache"] == "MISS"

    async def invalidate(body: bytes, kind: str = "application/json") -> tuple[int, dict]:
        answer = await registry.route(
            Request(
                "POST",
                "/gateway/api/cache/invalidate",
                {"content-type": kind, "x-buntime-internal": "true"},
                body,
                remote_addr="127.0.0.1",
            )
        )
        return answer.status, json.loads(answer.body)

    assert await invalidate(b'{"pattern": "/app/*"}') == (
        200,
        {"invalidated": 1, "pattern": "/app/*"},
    )
    status, error = await invalidate(b'{"pattern": "/x"}', "text/plain")
    assert (status, error["error"]["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    status, error = await invalidate(b"{}")
    assert (status, error["error"]["code"]) == (400, "MISSING_PARAMS")
    status, error = await invalidate(b"{nope")
    assert (status, error["error"]["code"]) == (400, "INVALID_JSON")
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_invalidating_without_a_cache(tmp_path):
    service = await started(tmp_path, {})
    answer = await service.registry.route(
        Request(
            "POST",
            "/gateway/api/cache/invalidate",
            {"content-type": "application/json", "x-buntime-internal": "true"},
            b'{"pattern": "*"}',
            remote_addr="127.0.0.1",
        )
    )
    assert answer.status == 409
    assert json.loads(answer.body)["error"]["code"] == "CACHE_DISABLED"
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_bad_setting_stops_the_load(tmp_path, eliot_logger):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "gateway", {"name": GATEWAY, "enabled": True, "cors": {"origins": ["x"]}})
    service = make_service(plugins, builtins_dir=BUILTINS_DIR)
    service.startService()
    assert await service.when_loaded() is None
    assert service.failed == (
        f'Plugin "{GATEWAY}" failed to load: ValueError: cors.origins:'
        " 'x' is not an origin like https://example.com or *"
    )
    eliot_logger.flush_tracebacks(ValueError)
