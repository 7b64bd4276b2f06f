"""
Semver versions and npm-style ranges for app directories and URLs.

A thin layer over node-semver (module C{nodesemver}).  Ranges are read
strictly here and rewritten into plain comparators the way npm's
C{includePrerelease} mode does (C{1.4} is C{>=1.4.0-0 <1.5.0-0}: it finds
1.4.0-beta but never 1.5.0-beta), then node-semver evaluates them.  That
avoids two quirks of the Python port: it accepts some odd input, and its
C{include_prerelease} flag ignores pre-release tags when comparing.
Versions sort by semver precedence (2.0.0 > 1.10.0 > 1.2.0 > 1.2.0-rc.1).
The C{latest} tag is the caller's business: neither a version nor a range.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import nodesemver
from attrs import field, frozen

if TYPE_CHECKING:
    from typing_extensions import TypeIs

MAX_RANGE_LENGTH = 256
"""Longest range text accepted (a URL segment, not an essay)."""

_NUM = r"0|[1-9][0-9]*"
_IDENT = rf"(?:{_NUM}|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_PRE = rf"{_IDENT}(?:\.{_IDENT})*"
_BUILD = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_VERSION = re.compile(rf"\A({_NUM})\.({_NUM})\.({_NUM})(?:-({_PRE}))?(?:\+({_BUILD}))?\Z")
_XID = rf"{_NUM}|[xX*]"
_PARTIAL = re.compile(rf"\Av?({_XID})(?:\.({_XID})(?:\.({_XID})(?:-({_PRE}))?(?:\+{_BUILD})?)?)?\Z")
_OPERATOR = re.compile(r"\A(\^|~>?|[<>]=?|=)?(.*)\Z", re.DOTALL)
_HYPHEN = re.compile(r"\A(\S+) +- +(\S+)\Z")
_RANGE_CHARS = re.compile(r"\A[0-9A-Za-z.+\-*^~<>=| ]*\Z")


class InvalidRange(ValueError):
    """A version range that cannot be used; C{str()} says why."""

    def __init__(self, text: str, reason: str) -> None:
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:64])
        shown += "..." if len(text) > 64 else ""
        super().__init__(f'Invalid version range "{shown}": {reason}')
        self.text = text
        self.reason = reason


def is_version(text: str) -> bool:
    """Whether C{text} is a strict semver version (C{1.2.3}, C{1.0.0-rc.1+b7})."""
    return _VERSION.match(text) is not None


def version_key(version: str) -> tuple:
    """
    A sort key giving semver precedence; build metadata only breaks ties so
    the order is total and stable.

    @raise ValueError: if C{version} is not a strict semver version.
    """
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"not a semver version: {version!r}")
    major, minor, patch, pre, build = match.groups()
    if pre is None:
        pre_key: tuple = (1,)
    else:
        pre_key = (
            0,
            *((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split(".")),
        )
    return (int(major), int(minor), int(patch), pre_key, build or "")


# -- desugaring ranges (npm's rules with includePrerelease) ----------------------


def _is_x(part: str | None) -> TypeIs[Literal["x", "X", "*"] | None]:
    return part is None or part in ("x", "X", "*")


def _partial(text: str) -> tuple[str | None, ...]:
    match = _PARTIAL.match(text)
    if match is None:
        raise ValueError(f"invalid version {text!r}")
    return match.groups()


def _caret(major: str | None, minor: str | None, patch: str | None, pre: str | None) -> str:
    if _is_x(major):
        return "*"
    if _is_x(minor):
        return f">={major}.0.0-0 <{int(major) + 1}.0.0-0"
    if _is_x(patch):
        if major == "0":
            return f">=0.{minor}.0-0 <0.{int(minor) + 1}.0-0"
        return f">={major}.{minor}.0-0 <{int(major) + 1}.0.0-0"
    low = f">={major}.{minor}.{patch}" + (f"-{pre}" if pre else "")
    if major != "0":
        return f"{low} <{int(major) + 1}.0.0-0"
    if minor != "0":
        return f"{low} <0.{int(minor) + 1}.0-0"
    return f"{low} <0.0.{int(patch) + 1}-0"


def _tilde(major: str | None, minor: str | None, patch: str | None, pre: str | None) -> str:
    if _is_x(major):
        return "*"
    if _is_x(minor):
        return f">={major}.0.0-0 <{int(major) + 1}.0.0-0"
    if _is_x(patch):
        return f">={major}.{minor}.0-0 <{major}.{int(minor) + 1}.0-0"
    low = f">={major}.{minor}.{patch}" + (f"-{pre}" if pre else "")
    return f"{low} <{major}.{int(minor) + 1}.0-0"


def _xrange(
    operator: str, major: str | None, minor: str | None, patch: str | None, pre: str | None
) -> str:
    if not (_is_x(major) or _is_x(minor) or _is_x(patch)):
        return f"{operator}{major}.{minor}.{patch}" + (f"-{pre}" if pre else "")
    if _is_x(major):
        return "<0.0.0-0" if operator in ("<", ">") else "*"
    if operator in ("", "="):
        if _is_x(minor):
            return f">={major}.0.0-0 <{int(major) + 1}.0.0-0"
        return f">={major}.{minor}.0-0 <{major}.{int(minor) + 1}.0-0"
    x_minor = _is_x(minor)
    major_n, minor_n = int(major), 0 if _is_x(minor) else int(minor)
    if operator in (">", "<="):
        operator = ">=" if operator == ">" else "<"
        if x_minor:
            major_n, minor_n = major_n + 1, 0
        else:
            minor_n += 1
    return f"{operator}{major_n}.{minor_n}.0-0"


def _hyphen(low: str, high: str) -> str:
    major, minor, patch, pre = _partial(low)
    if _is_x(major):
        start = ""
    elif _is_x(minor):
        start = f">={major}.0.0-0"
    elif _is_x(patch):
        start = f">={major}.{minor}.0-0"
    else:
        start = f">={major}.{minor}.{patch}" + (f"-{pre}" if pre else "-0")
    major, minor, patch, pre = _partial(high)
    if _is_x(major):
        end = ""
    elif _is_x(minor):
        end = f"<{int(major) + 1}.0.0-0"
    elif _is_x(patch):
        end = f"<{major}.{int(minor) + 1}.0-0"
    elif pre:
        end = f"<={major}.{minor}.{patch}-{pre}"
    else:
        end = f"<{major}.{minor}.{int(patch) + 1}-0"
    return f"{start} {end}".strip() or "*"


def _comparator(token: str) -> str:
    operator, rest = _OPERATOR.match(token).groups()  # type: ignore[union-attr]
    operator = operator or ""
    parts = _partial(rest)
    if operator == "^":
        return _caret(*parts)
    if operator.startswith("~"):
        return _tilde(*parts)
    return _xrange(operator, *parts)


def _desugar(alternative: str) -> str:
    """One C{||} alternative as plain comparators on full versions."""
    hyphen = _HYPHEN.match(alternative)
    if hyphen is not None:
        return _hyphen(*hyphen.groups())
    joined = re.sub(r"(\^|~>?|[<>]=?|=) +", r"\1", alternative)
    return " ".join(_comparator(token) for token in joined.split())


# -- ranges ---------------------------------------------------------------------


@frozen
class Range:
    """A validated npm-style version range; C{text} is what was given."""

    text: str
    _parsed: nodesemver.Range = field(repr=False, eq=False)

    def test(self, version: str) -> bool:
        """Whether the strict semver C{version} satisfies this range."""
        if not is_version(version):
            return False
        parsed = nodesemver.make_semver(version, False)
        return any(
            all(comparator.test(parsed) for comparator in alternative)
            for alternative in self._parsed.set
        )


def parse_range(text: str) -> Range:
    """
    Validate and parse an npm range (already URL-decoded): C{1}, C{1.4},
    C{1.x}, C{^1.0.0}, C{~1.4.0}, C{>=1 <2}, C{1.2.3 || 2.x}, C{*}, hyphen
    ranges.  Pre-releases are included (npm's C{includePrerelease}).

    @raise InvalidRange: for anything else (C{foo}, C{1.2.3.4}, C{>>1}, C{^},
        an empty range or an empty C{||} alternative, C{latest}).
    """
    if not isinstance(text, str):
        raise InvalidRange(repr(text), "a range must be a string")
    if len(text) > MAX_RANGE_LENGTH:
        raise InvalidRange(text, f"longer than {MAX_RANGE_LENGTH} characters")
    if _RANGE_CHARS.match(text) is None:
        raise InvalidRange(
            text,
            "unexpected character (a range uses digits, letters, . - + * ^ ~ < > = | and spaces)",
        )
    if text.strip(" ") == "latest":
        raise InvalidRange(text, '"latest" is a tag, not a range')
    alternatives = [part.strip(" ") for part in text.split("||")]
    if not any(alternatives):
        raise InvalidRange(text, "empty range")
    if not all(alternatives):
        raise InvalidRange(text, 'empty alternative around "||"')
    try:
        desugared = " || ".join(_desugar(part) for part in alternatives)
        parsed = nodesemver.make_range(desugared, False)
    except (ValueError, TypeError) as e:
        raise InvalidRange(text, _reason(e)) from None
    return Range(text, parsed)


def _reason(error: Exception) -> str:
    message = str(error)
    if len(message) > 100:  # node-semver repeats the whole text: the line shows it once already
        message = message[:97] + "..."
    if message.startswith("invalid version "):
        return message + " (expected e.g. 1, 1.4, 1.4.2, ^1.0.0, ~1.4.0, >=1 <2, 1.x, *)"
    return message or "not a version range"


def max_satisfying(versions: Iterable[str], range_: Range | str) -> str | None:
    """
    The highest of C{versions} that satisfies C{range_}, pre-releases
    included; C{None} when none does.  Entries that are not strict semver
    (C{latest}, junk) are skipped.

    @raise InvalidRange: if C{range_} is a string that is not a valid range.
    """
    rng = range_ if isinstance(range_, Range) else parse_range(range_)
    matching = [v for v in versions if is_version(v) and rng.test(v)]
    return max(matching, key=version_key) if matching else None
