"""
Hostile version ranges: any text, and texts built from the range grammar's
own pieces in any order (operators, partial versions, huge numbers,
pre-releases, x-ranges, hyphens, C{||}), give a range or one clear
L{InvalidRange} line, never another exception and never a long wait; a
range that parses answers every version it is asked about.
"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from buntime.apps.versions import (
    MAX_RANGE_LENGTH,
    InvalidRange,
    Range,
    max_satisfying,
    parse_range,
    version_key,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECONDS = 1.0
"""The most one range may take to read and use (it takes microseconds)."""

NUMBERS = st.sampled_from(["0", "1", "01", "9" * 30, "x", "X", "*", ""]) | st.integers(
    0, 10**6
).map(str)
PRE = st.sampled_from(["", "-0", "-rc.1", "-alpha", "-a.b.c.d.e.f", "-" + "a" * 200, "-01", "-"])
BUILD = st.sampled_from(["", "+b7", "+", "+a.b", "+" + "1" * 100])
PARTIAL = st.builds(
    lambda v, parts, pre, build: v + ".".join(parts) + pre + build,
    st.sampled_from(["", "v", "V", "=v"]),
    st.lists(NUMBERS, min_size=0, max_size=5),
    PRE,
    BUILD,
)
OPERATOR = st.sampled_from(["", "^", "~", "~>", ">", ">=", "<", "<=", "=", ">>", "^^", "~^"])
COMPARATOR = st.builds(
    lambda op, space, v: op + space + v, OPERATOR, st.sampled_from(["", " "]), PARTIAL
)
ALTERNATIVE = st.lists(COMPARATOR, min_size=0, max_size=4).map(" ".join) | st.builds(
    lambda a, b: f"{a} - {b}", PARTIAL, PARTIAL
)
RANGES = st.lists(ALTERNATIVE, min_size=1, max_size=4).map(" || ".join)
TEXT = (
    RANGES
    | st.text(alphabet="0123456789.xX*^~<>=| -+abcrv", max_size=80)
    | st.text(max_size=40)
    | st.sampled_from(["latest", "", " ", "||", "1 ||", "1" * 300, "1.2.3.4", "\x00", "%5E1"])
)
VERSIONS = st.lists(
    st.builds(
        lambda a, b, c, pre: f"{a}.{b}.{c}{pre}",
        st.integers(0, 10**20),
        st.integers(0, 5),
        st.integers(0, 5),
        st.sampled_from(["", "-0", "-rc.1", "-alpha.1", "-beta"]),
    )
    | st.sampled_from(["latest", "junk", "1.2", ""]),
    max_size=8,
)


@FUZZ
@given(text=TEXT, versions=VERSIONS)
@example(text="9" * 30 + "-" + "a" * 200 + " - ", versions=[])  # a 404-character line before
def test_any_range_text_is_a_range_or_one_clear_error(text, versions):
    started = time.monotonic()
    try:
        parsed = parse_range(text)
    except InvalidRange as error:
        line = str(error)
        assert line.startswith('Invalid version range "') and "\n" not in line
        assert len(line) < 400 and error.reason
    else:
        assert isinstance(parsed, Range) and len(text) <= MAX_RANGE_LENGTH
        found = max_satisfying(versions, parsed)
        assert found is None or (found in versions and parsed.test(found))
        assert all(version_key(found) >= version_key(v) for v in versions if parsed.test(v))
    assert time.monotonic() - started < SECONDS, text
