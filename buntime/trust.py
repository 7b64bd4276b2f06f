"""
Who may change what (docs/api.md, "Who may change what"): the rule the core
API and every plugin route that changes state apply to a request, from its
method, its peer and its headers alone.

A value-type module (no runtime state): the web layer applies it to the core
API, and plugins reach it through C{ctx.refuse_change} (L{ChangeRule}).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Container
from urllib.parse import urlsplit

from attrs import field, frozen

from buntime.http import Request, Response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods that change nothing: they always pass."""


def trusted(remote: str | None, allowed: Container[str]) -> bool:
    """Whether the peer C{remote} may tell where a request came from (C{X-Forwarded-*})."""
    if remote in allowed:
        return True
    if remote is not None and remote.startswith("::ffff:"):  # an IPv4 peer of a dual-stack port
        return remote[7:] in allowed
    return False


def names_this_machine(host: str) -> bool:
    """
    Whether a C{Host} header (C{name[:port]}) names this machine in a way no
    other site can borrow: C{localhost}, a name under C{.localhost}, or an
    IP address.  Any other name may be an attacker's, pointed at
    C{127.0.0.1} once its page is loaded (DNS rebinding): the browser then
    sends that page's requests from this machine, with an C{Origin} that
    matches the C{Host}.
    """
    name = host.strip().lower()
    if name.startswith("["):
        name, closed, _ = name[1:].partition("]")
        if not closed:
            return False
    elif ":" in name:
        name = name.rpartition(":")[0]
    name = name.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def loopback(remote: str | None) -> bool:
    """Whether the peer C{remote} is this machine (C{127.0.0.0/8}, C{::1}, or IPv4-mapped)."""
    if remote is None:
        return False
    if remote.startswith("::ffff:"):
        remote = remote[7:]
    return remote == "::1" or remote.startswith("127.")


@frozen
class ChangeRule:
    """
    The runtime's rule for state-changing requests: C{token} is
    C{RUNTIME_API_TOKEN} (never shown in a repr), C{allowed} the peers of
    C{RUNTIME_FORWARDED_ALLOW_IPS} (C{None}: any peer).
    """

    token: str | None = field(default=None, repr=False)
    allowed: Container[str] | None = frozenset({"127.0.0.1", "::1"})

    def refusal(self, request: Request, what: str = "apps and plugins") -> Response | None:
        """
        The 401 or 403 JSON answer refusing C{request}, or C{None} when it
        may go on (see L{api_refusal}); C{what} names what it would change.
        """
        return api_refusal(request, self.token, self.allowed, what)


def api_refusal(
    request: Request,
    token: str | None,
    allowed: Container[str] | None,
    what: str = "apps and plugins",
) -> Response | None:
    """
    The trust rule for a state-changing request (docs/api.md, "Who may
    change what"): with C{RUNTIME_API_TOKEN} (C{token}) set, it needs
    C{Authorization: Bearer <token>} (compared in constant time; a request
    bearing it needs no CSRF proof: browsers never add it on their own);
    without one, only this machine's peers may change anything, and only
    under a C{Host} that is this machine's own (L{names_this_machine}: not
    another site's name pointed here by DNS rebinding).  Then the
    CSRF rule (L{csrf_refusal}), whose C{x-buntime-internal} exemption only
    this machine and the trusted proxies (C{allowed}; C{None}: any peer) may
    claim.  C{None} means allowed.
    """
    if request.method in SAFE_METHODS:
        return None
    remote = request.remote_addr
    if token is not None:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8"), token.encode("utf-8")
        ):
            return None
        return Response.error(
            401,
            "UNAUTHORIZED",
            f"Changing {what} needs Authorization: Bearer <RUNTIME_API_TOKEN>",
            {"www-authenticate": 'Bearer realm="buntime"'},
        )
    local = loopback(remote)
    if not local:
        return Response.error(
            403,
            "FORBIDDEN",
            f"Changing {what} is allowed from this machine only;"
            " set RUNTIME_API_TOKEN to allow it with a bearer token",
        )
    host = request.headers.get("host") or ""
    if host and not names_this_machine(host):  # (a browser always sends one)
        return Response.error(
            403,
            "FORBIDDEN",
            f"Changing {what} without RUNTIME_API_TOKEN needs a Host of localhost or an IP"
            f" address, not {host[:100]!r} (another site's name may point here);"
            " set RUNTIME_API_TOKEN to allow it with a bearer token",
        )
    internal = local or allowed is None or trusted(remote, allowed)
    return csrf_refusal(request, internal)


def csrf_refusal(request: Request, internal_allowed: bool = True) -> Response | None:
    """
    SPEC §4 CSRF rule for the core API: a state-changing request needs an
    C{Origin} with an http(s) scheme, no credentials, and the C{Host}'s
    host:port; C{x-buntime-internal: true} without an C{Origin} is exempt
    (when C{internal_allowed}: the peer may claim it).  A browser sends an
    C{Origin} with every cross-site request, so another site's page whose
    CORS preflight a plugin approved cannot claim it.  C{None} means allowed.
    """
    if request.method in SAFE_METHODS:
        return None
    headers = request.headers
    origin = headers.get("origin")
    if (
        internal_allowed
        and origin is None
        and (headers.get("x-buntime-internal") or "").lower() == "true"
    ):
        return None
    if not origin:
        return Response.error(403, "FORBIDDEN", "Forbidden - Origin required")
    host = (headers.get("host") or "").lower()
    try:
        parsed = urlsplit(origin)
        allowed = (
            parsed.scheme in ("http", "https")
            and parsed.username is None
            and parsed.password is None
            and "@" not in parsed.netloc
            and not parsed.path  # an origin is scheme://host[:port] (RFC 6454)
            and "?" not in origin
            and "#" not in origin
            and parsed.netloc.lower() == host
            and host != ""
        )
    except ValueError:
        allowed = False
    if not allowed:
        expected = f"http://{host} or https://{host}" if host else "one naming the Host header"
        return Response.error(
            403,
            "FORBIDDEN",
            f"Forbidden - Origin {origin} is not this runtime's: expected {expected}",
        )
    return None
