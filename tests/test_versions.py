"""
Version ranges and version resolution: the SPEC §2 table and more.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from buntime.apps.discovery import AppCatalog
from buntime.apps.versions import (
    InvalidRange,
    is_version,
    max_satisfying,
    parse_range,
    version_key,
)


def make_dirs(root, *relative: str) -> None:
    for path in relative:
        os.makedirs(os.path.join(root, path), exist_ok=True)


# -- parse_range ---------------------------------------------------------------

VALID_RANGES = [
    "1",
    "1.4",
    "1.4.2",
    "1.x",
    "1.X",
    "1.*",
    "^1.0.0",
    "~1.4.0",
    ">=1 <2",
    ">= 1.2",
    "1.2.3 || 2.x",
    "*",
    "x",
    "=1.2.3",
    "v1.2.3",
    "1.2.3 - 2.0.0",
    "<2.0.0",
    "^0.0.1",
    "2.0.0-beta.1",
    "~1.2.3-beta",
    "^1.0.0-0",
    "1.2.3+build.5",
    " 1 ",
]

INVALID_RANGES = [
    "foo",
    "1.2.3.4",
    ">>1",
    "^",
    "~",
    "",
    "   ",
    "latest",
    "1 ||",
    "|| 1",
    "1 || || 2",
    "1.2.3\x00",
    "1\t",
    "\n1",
    "a.b.c",
    "^1..2",
    "01.2.3",
    "1.2.3-",
    "1.2.3foo",
    ">=",
    "<",
    "=",
    "v",
    "!1",
    "<=>1",
    "1.2.3 - ",
    "1/2",
    "1;rm",
    "%5E1.0.0",
    "1\u00e9",
    "^1.2.3 foo",
    "1" * 300,
]


@pytest.mark.parametrize("text", VALID_RANGES)
def test_valid_ranges(text):
    assert parse_range(text).text == text


@pytest.mark.parametrize("text", INVALID_RANGES)
def test_invalid_ranges(text):
    with pytest.raises(InvalidRange) as info:
        parse_range(text)
    assert str(info.value).startswith("Invalid version range ")
    assert info.value.text == text


def test_invalid_range_message_is_readable():
    with pytest.raises(InvalidRange) as info:
        parse_range("1.2.3\x00")
    assert "\x00" not in str(info.value)
    assert "\\x00" in str(info.value)
    with pytest.raises(InvalidRange, match=r'"latest" is a tag'):
        parse_range("latest")


@given(st.text(max_size=40))
def test_parse_range_only_raises_invalid_range(text):
    try:
        rng = parse_range(text)
    except InvalidRange:
        return
    # whatever is accepted can be used
    rng.test("1.0.0")


# -- versions and ordering ---------------------------------------------------------


@pytest.mark.parametrize(
    "text,valid",
    [
        ("1.2.3", True),
        ("0.0.0", True),
        ("1.0.0-rc.1", True),
        ("1.0.0-alpha.beta+exp.sha.5114f85", True),
        ("10.20.30", True),
        ("1.2", False),
        ("v1.2.3", False),
        ("01.2.3", False),
        ("1.2.3-01", False),
        ("1.2.3.4", False),
        ("latest", False),
        (" 1.2.3", False),
        ("1.2.3\n", False),
        ("\uff11.2.3", False),  # a fullwidth digit
    ],
)
def test_is_version(text, valid):
    assert is_version(text) is valid


def test_semver_ordering():
    shuffled = [
        "1.10.0",
        "1.0.0-alpha.beta",
        "2.0.0",
        "1.0.0-beta.11",
        "1.0.0",
        "1.2.0",
        "1.0.0-alpha",
        "1.0.0-rc.1",
        "1.0.0-beta.2",
        "1.0.0-alpha.1",
        "1.0.0-beta",
    ]
    assert sorted(shuffled, key=version_key) == [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
        "2.0.0",
    ]
    assert sorted(["1.2.0", "2.0.0", "1.10.0"], key=version_key, reverse=True) == [
        "2.0.0",
        "1.10.0",
        "1.2.0",
    ]
    with pytest.raises(ValueError):
        version_key("latest")


VERSIONS = [
    "0.9.0",
    "1.0.0-rc.1",
    "1.0.0",
    "1.2.0",
    "1.4.2",
    "1.4.9",
    "1.5.0-alpha",
    "1.10.0",
    "2.0.0-beta.1",
    "2.0.0",
    "2.1.0",
    "3.0.0-rc.1",
]


@pytest.mark.parametrize(
    "range_,expected",
    [
        ("1", "1.10.0"),
        ("1.4", "1.4.9"),
        ("1.4.2", "1.4.2"),
        ("1.4.3", None),
        ("1.x", "1.10.0"),
        ("^1.0.0", "1.10.0"),
        ("~1.4.0", "1.4.9"),
        (">=1 <2", "1.10.0"),
        ("1.2.3 || 2.x", "2.1.0"),
        ("1.2.0 || 0.x", "1.2.0"),
        ("*", "3.0.0-rc.1"),
        ("<1.4.0", "1.2.0"),
        ("~1.5.0-alpha", "1.5.0-alpha"),
        ("1.5", "1.5.0-alpha"),
        ("2.0.0-beta.1", "2.0.0-beta.1"),
        ("<2.0.0", "2.0.0-beta.1"),
        ("<2", "1.10.0"),
        ("2", "2.1.0"),
        ("^2.0.0-0", "2.1.0"),
        ("3", "3.0.0-rc.1"),
        ("^3.0.0", None),
        (">=3.0.0", None),
        (">=3.0.0-0", "3.0.0-rc.1"),
        ("1.0.0 - 1.4", "1.4.9"),
        ("4", None),
        ("0", "0.9.0"),
    ],
)
def test_max_satisfying(range_, expected):
    assert max_satisfying(VERSIONS, range_) == expected
    assert max_satisfying(VERSIONS, parse_range(range_)) == expected


@pytest.mark.parametrize(
    "range_,inside,outside",
    [
        ("1", ["1.0.0-0", "1.9.9"], ["0.9.9", "2.0.0-0"]),
        ("1.4", ["1.4.0-0", "1.4.9"], ["1.3.9", "1.5.0-0"]),
        ("1.4.2", ["1.4.2"], ["1.4.2-rc.1", "1.4.3"]),
        ("^1.0.0", ["1.0.0", "1.9.0"], ["1.0.0-rc.1", "2.0.0-0"]),
        ("~1.4.0", ["1.4.0", "1.4.9"], ["1.4.0-rc.1", "1.5.0-0"]),
        (">=1 <2", ["1.0.0-0", "1.9.9"], ["0.9.9", "2.0.0-0"]),
        ("1.2.3 || 2.x", ["1.2.3", "2.0.0-0", "2.9.9"], ["1.2.4", "3.0.0-0"]),
        ("*", ["0.0.0", "3.0.0-rc.1"], []),
        ("^0.1.2", ["0.1.2", "0.1.9"], ["0.1.1", "0.2.0-0"]),
        ("^0.0.1", ["0.0.1"], ["0.0.0", "0.0.2-0"]),
        ("1.2 - 2", ["1.2.0-0", "2.9.9"], ["1.1.9", "3.0.0-0"]),
        (">1", ["2.0.0-0"], ["1.9.9"]),
        ("<=1.2", ["1.2.0", "1.2.9"], ["1.3.0-0"]),
    ],
)
def test_ranges_desugar_like_npm_include_prerelease(range_, inside, outside):
    """The bounds npm's includePrerelease mode gives (C{1.4} is C{>=1.4.0-0 <1.5.0-0})."""
    parsed = parse_range(range_)
    assert [v for v in inside + outside if parsed.test(v)] == inside


def test_partial_versions_find_their_pre_releases():
    assert max_satisfying(["1.0.0-rc.1"], "1.0") == "1.0.0-rc.1"
    assert max_satisfying(["1.0.0-rc.1"], "1") == "1.0.0-rc.1"
    assert max_satisfying(["1.0.0-rc.1"], "^1.0.0") is None
    assert max_satisfying(["1.0.0-rc.1", "0.9.0"], "^1.0.0 || 0.x") == "0.9.0"


def test_max_satisfying_skips_non_versions_and_raises_on_bad_ranges():
    assert max_satisfying(["latest", "junk", "1.0.0"], "*") == "1.0.0"
    assert max_satisfying([], "*") is None
    with pytest.raises(InvalidRange):
        max_satisfying(["1.0.0"], ">>1")


# -- resolution across worker dirs: the SPEC table --------------------------------


@pytest.fixture
def apps(tmp_path):
    """Two worker dirs with every layout."""
    first, second = tmp_path / "a", tmp_path / "b"
    make_dirs(
        first,
        "hello@1.2.0",
        "hello@1.10.0",
        "hello/1.4.2",
        "hello/1.4.9",
        "hello/2.0.0-beta.1",
        "hello@latest",
        "nolatest@1.0.0",
        "nolatest/2.0.0",
        "nolatest@3.0.0-rc.1",
        "@acme/tool@1.0.0",
        "@acme/tool/1.1.0",
    )
    make_dirs(second, "hello@2.0.0", "hello/1.4.2", "other/0.1.0")
    return AppCatalog([str(first), str(second)], Clock()), first, second


@pytest.mark.parametrize(
    "name,spec,version",
    [
        ("hello", None, "latest"),
        ("hello", "latest", "latest"),
        ("hello", "1", "1.10.0"),
        ("hello", "1.4", "1.4.9"),
        ("hello", "1.4.2", "1.4.2"),
        ("hello", "^1.0.0", "1.10.0"),
        ("hello", "~1.4.0", "1.4.9"),
        ("hello", ">=1 <2", "1.10.0"),
        ("hello", "1.2.3 || 2.x", "2.0.0"),
        ("hello", "2.0.0-beta.1", "2.0.0-beta.1"),
        ("hello", "*", "2.0.0"),
        ("hello", "3", None),
        ("hello", "1.4.3", None),
        ("nolatest", None, "3.0.0-rc.1"),
        ("nolatest", "latest", None),
        ("nolatest", "2", "2.0.0"),
        ("@acme/tool", None, "1.1.0"),
        ("@acme/tool", "1.0", "1.0.0"),
        ("other", None, "0.1.0"),
        ("missing", None, None),
        ("missing", "1", None),
        ("missing", "latest", None),
    ],
)
def test_resolve_table(apps, name, spec, version):
    catalog, _, _ = apps
    found = catalog.resolve(name, spec)
    if version is None:
        assert found is None
    else:
        assert found is not None
        assert (found.name, found.version) == (name, version)
        assert os.path.isdir(found.dir)


@pytest.mark.parametrize("spec", ["foo", "1.2.3.4", ">>1", "^", ""])
def test_resolve_invalid_range_raises_even_for_unknown_apps(apps, spec):
    catalog, _, _ = apps
    with pytest.raises(InvalidRange):
        catalog.resolve("hello", spec)
    with pytest.raises(InvalidRange):
        catalog.resolve("missing", spec)


def test_precedence_flat_beats_nested_and_first_dir_wins(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    make_dirs(first, "app/1.0.0", "app@1.0.0", "app/2.0.0")
    make_dirs(second, "app@2.0.0", "app@3.0.0", "app/3.0.0")
    catalog = AppCatalog([str(first), str(second)], Clock())
    one = catalog.resolve("app", "1.0.0")
    assert (one.layout, one.dir) == ("flat", str(first / "app@1.0.0"))
    two = catalog.resolve("app", "2.0.0")
    assert (two.layout, two.dir) == ("nested", str(first / "app" / "2.0.0"))
    three = catalog.resolve("app", "3.0.0")
    assert (three.layout, three.dir) == ("flat", str(second / "app@3.0.0"))


def test_latest_precedence_flat_nested_simple(tmp_path):
    root = tmp_path / "w"
    make_dirs(root, "app/latest")
    (root / "app" / "manifest.yaml").write_text("name: app\n")
    catalog = AppCatalog([str(root)], Clock())
    assert catalog.resolve("app", None).layout == "nested"
    make_dirs(root, "app@latest")
    catalog.invalidate()
    assert catalog.resolve("app", "latest").layout == "flat"


# -- the cache ---------------------------------------------------------------------


def test_new_version_seen_after_cache_expires(tmp_path):
    clock = Clock()
    catalog = AppCatalog([str(tmp_path)], clock, cache_seconds=1.0)
    make_dirs(tmp_path, "app@1.0.0")
    assert catalog.resolve("app", None).version == "1.0.0"
    make_dirs(tmp_path, "app@1.1.0")
    clock.advance(0.5)
    assert catalog.resolve("app", None).version == "1.0.0"  # cached
    clock.advance(0.5)
    assert catalog.resolve("app", None).version == "1.1.0"  # within a second


def test_invalidate_forces_a_rescan(tmp_path):
    clock = Clock()
    catalog = AppCatalog([str(tmp_path)], clock)
    assert catalog.resolve("app", None) is None
    make_dirs(tmp_path, "app@1.0.0")
    assert catalog.resolve("app", None) is None
    catalog.invalidate()
    assert catalog.resolve("app", None).version == "1.0.0"


def test_removed_version_disappears_after_cache_expires(tmp_path):
    clock = Clock()
    catalog = AppCatalog([str(tmp_path)], clock)
    make_dirs(tmp_path, "app@1.0.0", "app@2.0.0")
    assert catalog.resolve("app", "*").version == "2.0.0"
    os.rmdir(tmp_path / "app@2.0.0")
    clock.advance(1.0)
    assert catalog.resolve("app", "*").version == "1.0.0"


def test_zero_cache_always_rescans(tmp_path):
    catalog = AppCatalog([str(tmp_path)], Clock(), cache_seconds=0)
    assert catalog.resolve("app", None) is None
    make_dirs(tmp_path, "app@1.0.0")
    assert catalog.resolve("app", None).version == "1.0.0"


def test_resolve_answers_are_remembered_until_the_next_scan(tmp_path, monkeypatch):
    (tmp_path / "hello@1.0.0").mkdir()
    (tmp_path / "hello@1.0.0" / "manifest.yaml").write_text("name: hello\n")
    clock = Clock()
    catalog = AppCatalog([str(tmp_path)], clock, cache_seconds=1.0)
    picks = []
    real_pick = AppCatalog._pick

    def counting(apps, name, spec):
        picks.append((name, spec))
        return real_pick(apps, name, spec)

    monkeypatch.setattr(AppCatalog, "_pick", staticmethod(counting))
    assert catalog.resolve("hello", "^1").version == "1.0.0"
    assert catalog.resolve("hello", "^1").version == "1.0.0"
    assert catalog.resolve("nope", None) is None
    assert catalog.resolve("nope", None) is None
    assert picks == [("hello", "^1"), ("nope", None)]
    with pytest.raises(InvalidRange):
        catalog.resolve("hello", "not a range!")
    (tmp_path / "hello@1.1.0").mkdir()
    (tmp_path / "hello@1.1.0" / "manifest.yaml").write_text("name: hello\n")
    assert catalog.resolve("hello", "^1").version == "1.0.0"  # same scan
    clock.advance(1.0)
    assert catalog.resolve("hello", "^1").version == "1.1.0"
    catalog.invalidate()
    assert catalog.resolve("hello", "^1").version == "1.1.0"
    assert picks.count(("hello", "^1")) == 3
