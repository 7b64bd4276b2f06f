"""
C{@buntime/plugin-proxy}: a reverse proxy in front of the apps.

Its rules (L{buntime.builtins.proxy.rules}) come from the manifest's
C{rules:} and from its API at C{/redirects/api/rules}; the API's are kept
under C{RUNTIME_DATA_DIR} and survive a restart.  Every request is tried
against the rules in order in C{on_request}, so a rule wins over the apps;
a match is answered by the upstream (L{buntime.builtins.proxy.forward}),
WebSocket upgrades too when the rule says C{ws: true}.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import unquote

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from zope.interface import implementer

from buntime.builtins.proxy.client import MAX_IDLE
from buntime.builtins.proxy.forward import Forwarder
from buntime.builtins.proxy.rules import Rule, RuleError, RuleStore, parse_rule
from buntime.builtins.proxy.tunnel import tunnel
from buntime.http import AppInfo, Request, Response, json_answer, json_error, page_answer
from buntime.interfaces import IBuntimePlugin, IPluginContext
from buntime.units import parse_duration

PAGE = os.path.join(os.path.dirname(__file__), "ui", "index.html")
"""The rules' page."""
WATCH_SECONDS = 1.0
"""How often the stored rules are looked at for another replica's change."""


LOCK_WAIT = 5.0
"""Seconds a change waits for another runtime sharing the data dir to release the rules."""
LOCK_RETRY = 0.01
"""Seconds between two tries of that lock."""


@implementer(IBuntimePlugin)
@define
class ProxyPlugin:  # type: ignore[misc]  # every IBuntimePlugin member is optional
    """The rules, the upstream connections, and the API that edits the rules."""

    config: Mapping[str, Any] = field(factory=dict)
    rules: list[Rule] = field(factory=list)
    own_base: str = "/redirects"
    forwarder: Forwarder | None = None
    store: RuleStore | None = None
    allow_link_local: bool = False
    logger: Any = None
    reactor: Any = None
    manifest_rules: list[Rule] = field(factory=list)
    context: IPluginContext | None = None
    watch: LoopingCall | None = None
    _stamp: tuple[int, int, int] | None = None

    routes = Klein()

    def on_init(self, ctx: IPluginContext) -> None:
        config = ctx.config
        self.context = ctx
        self.reactor = ctx.reactor
        self.logger = ctx.logger
        self.own_base = ctx.base or ""
        self.allow_link_local = bool(config.get("allowLinkLocal", False))
        timeout = parse_duration(config.get("timeout", "30s"))
        max_idle = int(config.get("maxIdleConnections", MAX_IDLE))
        idle_timeout = parse_duration(config.get("idleTimeout", "60s"))
        self.forwarder = Forwarder(ctx.reactor, timeout, max_idle, idle_timeout)
        rules = [
            parse_rule(item, source="manifest", rule_id=_manifest_id(item, index))
            for index, item in enumerate(config.get("rules") or [])
        ]
        self.manifest_rules = rules
        self.store = RuleStore(os.path.join(ctx.data_dir, "proxy"))
        self._reload()
        ctx.logger.info(f"Proxy ready with {len(self.rules)} rule(s)", rules=len(self.rules))
        # Replicas sharing RUNTIME_DATA_DIR see each other's API changes.
        self.watch = LoopingCall(self._reload_if_changed)
        self.watch.clock = ctx.reactor
        self.watch.start(WATCH_SECONDS, now=False)

    def on_shutdown(self) -> None:
        if self.watch is not None and self.watch.running:
            self.watch.stop()
        if self.forwarder is not None:
            self.forwarder.close()

    def _reload(self) -> None:
        """The manifest's rules, then the stored ones (read again)."""
        assert self.store is not None
        self._stamp = self.store.stamp()
        stored, problems = self.store.load(self.allow_link_local)
        for problem in problems:
            self.logger.warn(f"A stored proxy rule was left out: {problem}")
        taken = {rule.id for rule in self.manifest_rules}
        self.rules = [*self.manifest_rules, *(rule for rule in stored if rule.id not in taken)]

    def _reload_if_changed(self) -> None:
        if self.store is not None and self.store.stamp() != self._stamp:
            self._reload()
            self.logger.info(
                "Proxy rules changed on disk (another replica?): reloaded", rules=len(self.rules)
            )

    # -- requests -------------------------------------------------------------

    def on_request(self, request: Request, app: AppInfo | None) -> Deferred[Response] | None:
        """The upstream's answer when a rule matches C{request}'s path; C{None} otherwise."""
        if not self.rules:
            return None
        path = request.path
        own = self.own_base
        if own and (path == own or path.startswith(own + "/")):
            return None  # the proxy's own API and page are never proxied
        for rule in self.rules:
            upstream_path = rule.upstream_path(path)
            if upstream_path is None:
                continue
            if _dot_segments(path):
                return self._labelled(request, Deferred.fromCoroutine(_refused_dots()))
            if _upgrade(request):
                if not rule.ws:
                    return self._labelled(request, Deferred.fromCoroutine(_refused_upgrade()))
                timeout = self.forwarder.timeout if self.forwarder is not None else 30.0
                return Deferred.fromCoroutine(
                    tunnel(self.reactor, request, rule, upstream_path, timeout)
                )
            assert self.forwarder is not None
            return self._labelled(request, self.forwarder.forward(request, rule, upstream_path))
        return None

    def _labelled(self, request: Request, answer: Deferred[Response]) -> Deferred[Response]:
        """
        C{answer} with the gateway's rate-limit and CORS headers when the
        gateway is on: it runs first, but its C{on_response} hook does not
        see an answer made in C{on_request}.
        """
        gateway = self.context.get_service("gateway") if self.context is not None else None
        label = getattr(gateway, "label", None)
        if label is None:
            return answer
        return answer.addCallback(lambda response: label(request, response))

    # -- the API ----------------------------------------------------------------

    @routes.route("/", methods=["GET", "HEAD"])
    def page(self, request: Any) -> bytes:
        return page_answer(request, PAGE)

    @routes.route("/api/rules", methods=["GET", "HEAD"])
    def list_rules(self, request: Any) -> bytes:
        return json_answer(request, {"rules": [rule.describe() for rule in self.rules]})

    @routes.route("/api/rules", methods=["POST"])
    def add_rule(self, request: Any) -> bytes | Deferred[bytes]:
        refused = self._refused(request)
        if refused is not None:
            return refused
        data = _body(request)
        if isinstance(data, bytes):
            return data
        try:
            rule = parse_rule(data, allow_link_local=self.allow_link_local)
        except RuleError as error:
            return json_error(request, 400, "INVALID_RULE", str(error))
        return self._changing(request, partial(self._add, request, rule))

    def _add(self, request: Any, rule: Rule) -> bytes:
        if any(existing.id == rule.id for existing in self.rules):
            return json_error(request, 409, "RULE_EXISTS", f"A rule with id {rule.id} exists")
        unsaved = self._save(request, [*self.rules, rule])
        if unsaved is not None:
            return unsaved
        return json_answer(request, rule.describe(), 201)

    @routes.route("/api/rules/<rule_id>", methods=["GET", "HEAD"])
    def get_rule(self, request: Any, rule_id: str) -> bytes:
        found = self._find(rule_id)
        if found is None:
            return json_error(request, 404, "RULE_NOT_FOUND", f"No rule {rule_id}")
        return json_answer(request, found.describe())

    @routes.route("/api/rules/<rule_id>", methods=["PUT"])
    def put_rule(self, request: Any, rule_id: str) -> bytes | Deferred[bytes]:
        refused = self._refused(request)
        if refused is not None:
            return refused
        return self._changing(request, partial(self._put, request, rule_id))

    def _put(self, request: Any, rule_id: str) -> bytes:
        found = self._find(rule_id)
        refusal = self._unchangeable(request, found, rule_id)
        if refusal is not None:
            return refusal
        data = _body(request)
        if isinstance(data, bytes):
            return data
        if isinstance(data, dict):
            data = {**data, "id": rule_id}
        try:
            rule = parse_rule(data, allow_link_local=self.allow_link_local, rule_id=rule_id)
        except RuleError as error:
            return json_error(request, 400, "INVALID_RULE", str(error))
        unsaved = self._save(
            request, [rule if existing is found else existing for existing in self.rules]
        )
        if unsaved is not None:
            return unsaved
        return json_answer(request, rule.describe())

    @routes.route("/api/rules/<rule_id>", methods=["DELETE"])
    def delete_rule(self, request: Any, rule_id: str) -> bytes | Deferred[bytes]:
        refused = self._refused(request)
        if refused is not None:
            return refused
        return self._changing(request, partial(self._delete, request, rule_id))

    def _delete(self, request: Any, rule_id: str) -> bytes:
        found = self._find(rule_id)
        refusal = self._unchangeable(request, found, rule_id)
        if refusal is not None:
            return refusal
        unsaved = self._save(
            request, [existing for existing in self.rules if existing is not found]
        )
        if unsaved is not None:
            return unsaved
        request.setResponseCode(204)
        return b""

    def _changing(
        self, request: Any, change: Callable[[], bytes], waited: float = 0.0
    ) -> bytes | Deferred[bytes]:
        """
        C{change()}'s answer, made with the rules file locked and read again
        first if another runtime sharing the data dir has changed it since.
        While another runtime holds the lock it is tried again every
        L{LOCK_RETRY} seconds, for at most L{LOCK_WAIT} (then 503).
        """
        assert self.store is not None
        try:
            held = self.store.try_lock()
            if held is None:
                if waited >= LOCK_WAIT:
                    return json_error(
                        request,
                        503,
                        "RULES_BUSY",
                        "Another runtime sharing the data dir is changing the rules; try again",
                    )
                later = deferLater(self.reactor, LOCK_RETRY, lambda: None)
                return later.addCallback(
                    lambda _: self._changing(request, change, waited + LOCK_RETRY)
                )
            try:
                self._reload_if_changed()
                return change()
            finally:
                os.close(held)
        except OSError as error:  # the directory to lock cannot be made or opened
            return self._not_saved(request, error)

    def _refused(self, request: Any) -> bytes | None:
        """The runtime's trust rule for a change of the rules (C{ctx.refuse_change})."""
        assert self.context is not None
        refused: bytes | None = self.context.refuse_change(request)
        return refused

    def _find(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    def _unchangeable(self, request: Any, found: Rule | None, rule_id: str) -> bytes | None:
        if found is None:
            return json_error(request, 404, "RULE_NOT_FOUND", f"No rule {rule_id}")
        if found.source == "manifest":
            return json_error(
                request,
                409,
                "MANIFEST_RULE",
                f"Rule {rule_id} comes from the manifest: edit it there",
            )
        return None

    def _save(self, request: Any, rules: list[Rule]) -> bytes | None:
        """
        Keep C{rules} (on disk first: a rule is in use only once it is saved);
        C{None}, or the error answer when the disk refused (nothing changed).
        """
        assert self.store is not None
        try:
            kept = self.store.save(rules)
        except OSError as error:
            return self._not_saved(request, error)
        if kept is not None:
            self.logger.warn(f"The unreadable proxy rules file was kept as {kept}")
        self._stamp = self.store.stamp()
        self.rules = rules
        return None

    def _not_saved(self, request: Any, error: OSError) -> bytes:
        """The answer (and log line) when the disk refused a change: nothing changed."""
        assert self.store is not None
        reason = error.strerror or str(error)
        self.logger.error(f"The proxy rules could not be saved in {self.store.path}: {reason}")
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        return json_error(
            request,
            507 if full else 500,
            "RULES_NOT_SAVED",
            f"The rules could not be saved: {reason}; nothing changed",
        )


def _manifest_id(item: object, index: int) -> str:
    given = item.get("id") if isinstance(item, Mapping) else None
    return given if isinstance(given, str) else f"manifest-{index + 1}"


def _body(request: Any) -> Any:
    """The request's JSON body, or the 400 answer (bytes) when it is not JSON."""
    try:
        return json.loads(request.content.read() or b"null")
    except ValueError as error:
        return json_error(request, 400, "INVALID_JSON", f"The body is not JSON: {error}")


def _dot_segments(path: str) -> bool:
    """
    Whether C{path} has a C{.} or C{..} segment, percent-encoded or not,
    C{%2F} and C{\\} counted as C{/} (an upstream may read them so): an
    upstream resolves them, out of the target's prefix and the rule's pattern.
    """
    if "." not in path and "%" not in path:
        return False
    decoded = unquote(path).replace("\\", "/")
    return any(segment in (".", "..") for segment in decoded.split("/"))


async def _refused_dots() -> Response:
    return Response.error(400, "INVALID_PATH", "A proxied path may not have '.' or '..' segments")


def _upgrade(request: Request) -> bool:
    connection = (request.headers.get("connection") or "").lower()
    return "upgrade" in connection and request.headers.get("upgrade") is not None


async def _refused_upgrade() -> Response:
    return Response.error(
        501, "UPGRADE_NOT_PROXIED", "This proxy rule does not pass WebSocket upgrades (ws: false)"
    )


def plugin(config: Mapping[str, Any]) -> ProxyPlugin:
    """The factory the loader calls with the manifest's settings."""
    return ProxyPlugin(config)
