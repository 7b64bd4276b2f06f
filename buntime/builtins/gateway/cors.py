"""
CORS: which origins may read the runtime's answers, and the preflight
answered without reaching any app.  Header pairs are worked out once per
allowed origin, not per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define, field, frozen

from buntime.builtins._paths import NO_PATHS, PathSet
from buntime.http import Request, Response

DEFAULT_METHODS = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE")
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def _names(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings, not {value!r}")
    return tuple(v.strip() for v in value)


@frozen
class CorsSettings:
    """C{cors:} of the gateway's manifest."""

    origins: tuple[str, ...]
    """Allowed origins; C{("*",)} for any."""
    credentials: bool = False
    methods: tuple[str, ...] = DEFAULT_METHODS
    headers: tuple[str, ...] = ()
    """Request headers a preflight allows; empty: those it asks for."""
    expose: tuple[str, ...] = ()
    max_age: int = 600
    exclude: PathSet = NO_PATHS

    @classmethod
    def parse(cls, value: Mapping[str, Any] | None) -> CorsSettings | None:
        """The settings, or C{None} when CORS is off (no C{origins})."""
        if not value:
            return None
        origins = _names(value.get("origins"), "cors.origins")
        if not origins:
            return None
        for origin in origins:
            if origin != "*" and ("://" not in origin or origin.endswith("/")):
                raise ValueError(
                    f"cors.origins: {origin!r} is not an origin like https://example.com or *"
                )
        credentials = value.get("credentials", False)
        if not isinstance(credentials, bool):
            raise ValueError(f"cors.credentials must be true or false, not {credentials!r}")
        max_age = value.get("maxAge", 600)
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
            raise ValueError(f"cors.maxAge must be a number of seconds, not {max_age!r}")
        methods = _names(value.get("methods"), "cors.methods") or DEFAULT_METHODS
        return cls(
            origins=("*",) if "*" in origins else origins,
            credentials=credentials,
            methods=tuple(m.upper() for m in methods),
            headers=_names(value.get("headers"), "cors.headers"),
            expose=_names(value.get("exposeHeaders"), "cors.exposeHeaders"),
            max_age=max_age,
            exclude=PathSet.parse(value.get("excludePaths"), "cors.excludePaths"),
        )


@define
class Cors:
    """
    The CORS policy of L{CorsSettings}: L{preflight} answers an C{OPTIONS}
    preflight, L{headers} gives the pairs an answer to C{origin} carries.
    """

    settings: CorsSettings
    preflights: int = 0
    refused: int = 0
    varies: bool = field(init=False)
    """Whether answers depend on the request's C{Origin} (C{Vary: Origin} on each)."""
    _any: bool = field(init=False)
    _allowed: frozenset[str] = field(init=False)
    _pairs: dict[str, tuple[tuple[str, str], ...]] = field(factory=dict, init=False)
    _preflight: tuple[tuple[str, str], ...] = field(init=False)

    def __attrs_post_init__(self) -> None:
        settings = self.settings
        self._any = settings.origins == ("*",)
        self.varies = not self._any or settings.credentials
        self._allowed = frozenset(settings.origins)
        preflight = [
            ("access-control-allow-methods", ", ".join(settings.methods)),
            ("access-control-max-age", str(settings.max_age)),
        ]
        if settings.headers:
            preflight.append(("access-control-allow-headers", ", ".join(settings.headers)))
        self._preflight = tuple(preflight)

    def headers(self, origin: str) -> tuple[tuple[str, str], ...] | None:
        """The CORS headers of an answer to C{origin}; C{None}: not an allowed origin."""
        pairs = self._pairs.get(origin)
        if pairs is not None:
            return pairs
        if not (self._any or origin in self._allowed):
            return None
        settings = self.settings
        # "*" cannot carry credentials: the origin itself is named then
        value = "*" if self._any and not settings.credentials else origin
        found = [("access-control-allow-origin", value)]
        if settings.credentials:
            found.append(("access-control-allow-credentials", "true"))
        if settings.expose:
            found.append(("access-control-expose-headers", ", ".join(settings.expose)))
        pairs = tuple(found)
        if len(self._pairs) < 1024:  # "*" allows any origin: remember a bounded few
            self._pairs[origin] = pairs
        return pairs

    def preflight(self, request: Request, origin: str) -> Response:
        """The answer to a preflight from C{origin}: 204 with the policy, or 403."""
        allowed = self.headers(origin)
        if allowed is None:
            self.refused += 1
            return Response.error(
                403,
                "CORS_ORIGIN_DENIED",
                f"Origin {origin} may not call this server",
                [("vary", _PREFLIGHT_VARY)],  # another origin may get a 204 here
            )
        self.preflights += 1
        pairs = [*allowed, *self._preflight]
        if not self.settings.headers:
            asked = request.headers.get("access-control-request-headers")
            if asked:
                pairs.append(("access-control-allow-headers", asked))
        pairs.append(("vary", _PREFLIGHT_VARY))
        return Response(204, pairs)
