"""
The proxy's rules: what each one matches and where it sends a request, read
from the manifest (C{rules:}) or from the API, checked before they are used,
and the API's rules kept on disk.

A rule is C{{id, name, pattern, target, rewrite, changeOrigin, headers, ws,
base}}: C{pattern} is a regular expression searched in the request's path
(under C{base} when one is given, which is then taken off first);
C{target} is the upstream's C{http(s)://host[:port][/prefix]}; C{rewrite}
makes the upstream path from the match (C{$1}, C{$2}, C{$<name>}; without
one, the path as it came), which goes after the target's C{/prefix} (as
nginx's C{proxy_pass http://host/prefix}); C{changeOrigin} sends the upstream's own
C{Host}; C{headers} are added to the request; C{ws} lets WebSocket upgrades
through.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import re
import socket
import stat
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

from attrs import frozen

METADATA_HOSTS = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2"}
)
"""Names of cloud metadata services (their addresses are link-local: also refused)."""

_FIELDS = frozenset(
    {"id", "name", "pattern", "target", "rewrite", "changeOrigin", "headers", "ws", "base"}
)


class RuleError(ValueError):
    """A rule that cannot be used: the message says which field and why."""


@frozen
class Rule:
    """One proxy rule, checked (see the module's docstring)."""

    id: str
    name: str
    pattern: re.Pattern[str]
    target: str
    rewrite: str | None = None
    change_origin: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    ws: bool = False
    base: str = ""
    source: str = "api"  # or "manifest": those are not changed through the API
    guarded: bool = False
    """Whether the SSRF guard holds it: it may not reach link-local addresses (L{link_local})."""
    upstream: tuple[str, str, int] = ("http", "", 80)
    """The target's scheme, host and port."""
    authority: str = ""
    """The target's C{host[:port]}, as a C{Host} header names it."""
    prefix: str = ""
    """The target's path, without a trailing slash: what every upstream path starts with."""
    template: tuple[tuple[bool, str | int], ...] = ()
    """C{rewrite} in parts: C{(False, text)} and C{(True, group)} (a number or a name)."""

    def upstream_path(self, path: str) -> str | None:
        """
        The path to ask the upstream for (the target's prefix, then the
        path, rewritten if the rule says so), or C{None} when the rule does
        not match C{path} (a request path without its query).
        """
        if self.base:
            if path != self.base and not path.startswith(self.base + "/"):
                return None
            path = path[len(self.base) :] or "/"
        found = self.pattern.search(path)
        if found is None:
            return None
        if self.rewrite is None:
            return self.prefix + path
        rewritten = "".join(
            (found.group(part) or "") if group else str(part) for group, part in self.template
        )
        return self.prefix + (rewritten if rewritten.startswith("/") else "/" + rewritten)

    def describe(self) -> dict[str, Any]:
        """The rule as the API shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "pattern": self.pattern.pattern,
            "target": self.target,
            "rewrite": self.rewrite,
            "changeOrigin": self.change_origin,
            "headers": dict(self.headers),
            "ws": self.ws,
            "base": self.base or None,
            "source": self.source,
        }


_GROUP = re.compile(r"\$(?:(\d+)|\{(\w+)\}|<(\w+)>)")
"""C{$1}, C{${1}} or C{${name}}, C{$<name>}: a group of the pattern in a C{rewrite}."""


def _template(rewrite: str) -> tuple[tuple[bool, str | int], ...]:
    """C{rewrite} as text and groups (a number, or a name), in order (see L{Rule.template})."""
    parts: list[tuple[bool, str | int]] = []
    at = 0
    for found in _GROUP.finditer(rewrite):
        if found.start() > at:
            parts.append((False, rewrite[at : found.start()]))
        group = found.group(1) or found.group(2) or found.group(3)
        parts.append((True, int(group) if group.isdigit() else group))
        at = found.end()
    if at < len(rewrite):
        parts.append((False, rewrite[at:]))
    return tuple(parts)


def parse_rule(
    data: object, *, source: str = "api", allow_link_local: bool = True, rule_id: str | None = None
) -> Rule:
    """
    A L{Rule} from its JSON/YAML form.  With C{allow_link_local} false, a
    target on a link-local address or a cloud metadata name is refused, and
    the rule is C{guarded}: a target whose name resolves to such an address
    is refused when it is connected to (the SSRF guard for rules that come
    through the API).

    @raise RuleError: a field is missing, of the wrong type, or invalid.
    """
    if not isinstance(data, Mapping):
        raise RuleError("a rule must be an object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise RuleError(f"unknown field(s): {', '.join(unknown)}")
    pattern = _compiled(data.get("pattern"))
    target = _target(data.get("target"), allow_link_local)
    rewrite = data.get("rewrite")
    if rewrite is not None and not isinstance(rewrite, str):
        raise RuleError("rewrite must be text")
    if rewrite is not None:
        _check_groups(rewrite, pattern)
    identifier = rule_id or data.get("id") or uuid4().hex[:12]
    if not isinstance(identifier, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", identifier):
        raise RuleError("id must be 1-64 letters, digits, '_', '.' or '-'")
    name = data.get("name") or identifier
    base = data.get("base") or ""
    if not isinstance(name, str):
        raise RuleError("name must be text")
    if not isinstance(base, str) or (base and not re.fullmatch(r"(/[^/?#]+)+", base)):
        raise RuleError("base must be a path like /api (no trailing slash)")
    for flag in ("changeOrigin", "ws"):
        if not isinstance(data.get(flag, False), bool):
            raise RuleError(f"{flag} must be true or false")
    return Rule(
        id=identifier,
        name=name,
        pattern=pattern,
        target=target,
        rewrite=rewrite,
        change_origin=bool(data.get("changeOrigin", False)),
        headers=_headers(data.get("headers")),
        ws=bool(data.get("ws", False)),
        base=base,
        source=source,
        guarded=not allow_link_local,
        upstream=_upstream(target),
        authority=urlsplit(target).netloc,
        prefix=urlsplit(target).path,
        template=() if rewrite is None else _template(rewrite),
    )


def _upstream(target: str) -> tuple[str, str, int]:
    parts = urlsplit(target)
    secure = parts.scheme == "https"
    return parts.scheme, parts.hostname or "", parts.port or (443 if secure else 80)


def _check_groups(rewrite: str, pattern: re.Pattern[str]) -> None:
    """Every C{$n} and C{$<name>} of C{rewrite} is a group of C{pattern}."""
    for group, part in _template(rewrite):
        if not group:
            continue
        known = part <= pattern.groups if type(part) is int else part in pattern.groupindex
        if not known:
            raise RuleError(f"rewrite refers to ${part}, a group the pattern does not have")


def _compiled(pattern: object) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise RuleError("pattern is required: a regular expression on the path")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise RuleError(f"pattern is not a valid regular expression: {error}") from None


def _target(target: object, allow_link_local: bool) -> str:
    if not isinstance(target, str) or not target:
        raise RuleError("target is required: http(s)://host[:port][/prefix]")
    try:
        parts = urlsplit(target)
        parts.port  # noqa: B018  # raises on a bad port
    except ValueError as error:
        raise RuleError(f"target is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RuleError("target must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise RuleError("target may not hold credentials, a query or a fragment")
    if not allow_link_local and _is_link_local(parts.hostname):
        raise RuleError(
            f"target {parts.hostname} is a link-local or metadata address;"
            " only the manifest's allowLinkLocal lets rules reach it"
        )
    return target.rstrip("/")


def _is_link_local(host: str) -> bool:
    """
    A metadata service's name, or a link-local address written in any form
    the resolver reads (C{169.254.169.254}, C{2852039166}, C{0xa9fea9fe},
    C{0251.0376.0251.0376}, C{[::ffff:169.254.169.254]}...).  A name that
    resolves to one is caught when its connection is made (L{link_local}).
    """
    name = host.strip("[]").lower().rstrip(".")
    if name in METADATA_HOSTS:
        return True
    try:
        found = socket.getaddrinfo(name, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return False  # a name, not an address
    return any(link_local(str(info[4][0])) for info in found)


def link_local(address: str) -> bool:
    """
    Whether the IP C{address} (as a socket reports it) is link-local, where
    cloud metadata services answer: C{169.254.0.0/16}, C{fe80::/10}, those
    mapped into IPv6, and AWS's C{fd00:ec2::254}.
    """
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return parsed.is_link_local or str(parsed) == "fd00:ec2::254"


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise RuleError("headers must be an object of name: value")
    pairs = []
    for name, text in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise RuleError(f"header name {name!r} is not a token")
        if not isinstance(text, str | int | float) or any(c in str(text) for c in "\r\n\0"):
            raise RuleError(f"header {name} must be one line of text")
        pairs.append((name, str(text)))
    return tuple(pairs)


class RuleStore:
    """
    The rules added through the API, kept in C{<data dir>/rules.json}: read
    at start, written whole (to a temporary file, then renamed) on every
    change, so a crash leaves the old file or the new one, never half of one.
    Runtimes sharing the directory take turns to change it (L{try_lock}).
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "rules.json")
        self.unreadable = False
        """The file was there but could not be read: the next save keeps it aside."""

    def stamp(self) -> tuple[int, int, int] | None:
        """What changes when the file does (another replica wrote it): C{None} if none."""
        try:
            found = os.stat(self.path)
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size, found.st_ino

    def try_lock(self) -> int | None:
        """
        Take the directory's lock (C{flock}, as every runtime sharing it
        does, while it reads the rules again, changes and saves them, so
        that none writes over a rule another one has just saved): the fd to
        close to release it, or C{None} while another runtime holds it (it
        is not waited for here: that would stop this runtime's reactor).
        """
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    def load(self, allow_link_local: bool) -> tuple[list[Rule], list[str]]:
        """The stored rules, and a line for each one that can no longer be used."""
        self.unreadable = False
        try:
            stored = json.loads(_read_regular(self.path))
        except FileNotFoundError:
            return [], []
        except (OSError, ValueError) as error:
            self.unreadable = True
            return [], [f"{self.path} cannot be read: {error}"]
        rules, problems = [], []
        for item in stored if isinstance(stored, list) else []:
            try:
                rules.append(parse_rule(item, allow_link_local=allow_link_local))
            except RuleError as error:
                problems.append(
                    f"stored rule {item.get('id') if isinstance(item, dict) else item!r}: {error}"
                )
        return rules, problems

    def save(self, rules: Iterable[Rule]) -> str | None:
        """
        Write C{rules}; an unreadable file found at load is not overwritten
        but renamed to C{rules.json.unreadable} first: that name is returned.
        """
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        document = [_stored(rule) for rule in rules if rule.source == "api"]
        handle, temporary = tempfile.mkstemp(prefix=".rules-", dir=directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            kept = None
            if self.unreadable and os.path.lexists(self.path):
                kept = self.path + ".unreadable"
                os.replace(self.path, kept)
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        self.unreadable = False
        return kept


def _read_regular(path: str) -> str:
    """
    The text of the file at C{path}; L{OSError} if it is not a regular file
    (a FIFO would block the reactor for good, a device would never end).
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return handle.read().decode("utf-8")


def _stored(rule: Rule) -> dict[str, Any]:
    described = rule.describe()
    described.pop("source")
    return {key: value for key, value in described.items() if value not in (None, {}, False)}
