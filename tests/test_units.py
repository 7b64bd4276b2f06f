"""Durations and sizes: L{buntime.units}."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buntime.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("30", 30.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1w", 7 * 86400.0),
        ("1y", 365 * 86400.0),
        (" 1.5 S ", 1.5),
        (".5s", 0.5),
        ("0ms", 0.0),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "abc", "-1", -1, "5 minutes", "1x", "1.2.3s", "s", None, True, [], float("nan"), "inf"],
)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("100", 100),
        ("100b", 100),
        ("1kb", 1024),
        ("10mb", 10 * 1024**2),
        ("10MB", 10 * 1024**2),
        ("1gb", 1024**3),
        ("1.5kb", 1536),
        (" 2 kb ", 2048),
    ],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value", ["", "ten", "-1kb", -5, "1tb", "1 k b", "mb", None, False, {}, float("inf")]
)
def test_parse_size_rejects(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_parse_size_message_names_the_value():
    with pytest.raises(ValueError, match="'ten'"):
        parse_size("ten")


@given(st.integers(min_value=0, max_value=2**40))
def test_format_size_round_trips(size):
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0b"), (1000, "1000b"), (1024, "1kb"), (10 * 1024**2, "10mb")]
)
def test_format_size(size, text):
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_duration_units_scale(number, unit):
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{number}{unit}") == pytest.approx(number * factor)
