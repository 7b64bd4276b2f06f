"""
Hostile manifests: any document shape (wrong types, huge numbers, NaN,
dates, bytes, deep nesting, unknown and non-string keys), any text, and
YAML's own traps (alias bombs, self-referencing aliases, unknown tags,
impossible dates, integers of thousands of digits) give a valid manifest
or one clear error line, never another exception, never a long wait; and
what the runtime makes of a valid one (the worker's configuration and
environment) works too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from buntime.manifest import MAX_DEPTH, ManifestError, load_app_manifest
from buntime.manifest_fields import FIELDS
from buntime.plugins.discovery import read_manifest
from buntime.plugins.manifest import (
    PluginError,
    check_base,
    parse_plugin_manifest,
    reserved_bases,
)
from buntime.pool.environment import build_worker_env, worker_config

FUZZ = settings(
    max_examples=150,
    deadline=None,  # a loaded CI machine: the bound is checked per example below
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SECONDS = 2.0
"""The most one example may take (they take milliseconds)."""

NAMED = [
    *FIELDS,
    "config",
    "base",
    "menus",
    "dependencies",
    "optionalDependencies",
    "enabled",
    "pluginEntry",
    "publicRoutes",
]
HUGE = "HUGE_NUMBER_HERE"
"""Written into the YAML as an integer of 5000 hex digits (too big for hypothesis to show)."""
KEYS = (
    st.sampled_from([*NAMED, HUGE])
    | st.text(max_size=8)
    | st.integers(-3, 3)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**4000)  # more digits: in HOSTILE_YAML
    | st.floats()
    | st.text(max_size=24)
    | st.sampled_from(
        ["1s", "0", "-1", "10mb", "1e999", "0x10", "${HOME}", "${X:-5s}", "${", "\x00", "..", HUGE]
    )
    | st.dates()
    | st.binary(max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=30,
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=10) | VALUES

HOSTILE_YAML = [
    "[" * 10_000,
    "a: " + "{b: " * 2_000 + "1" + "}" * 2_000,
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n"
        for n, p in zip("bcdefghij", "abcdefghi", strict=True)
    )
    + "env: *j\n",
    "env: &e {A: *e}\n",
    "a: &x [*x]\n",
    "timeout: " + "9" * 5_000 + "\n",
    "timeout: 0x" + "f" * 5_000 + "\n",
    "when: 2020-13-45\n",
    "x: !!int nope\n",
    "x: !!float nope\n",
    "x: !!binary '###'\n",
    "x: !!python/object:os.system [ls]\n",
    "x: !!set {a, b}\nenv: !!set {A}\n",
    "? [a, b]\n: c\n",
    "\tname: tabbed\n",
    "name: a\n---\nname: b\n",
    "%YAML 9.9\n---\nname: x\n",
    "\ufeffname: bom\n",
    "name: \udc80\n",
]


def _app(tmp_path: Path, text: str | bytes, name: str = "manifest.yaml") -> str:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    for old in app.iterdir():
        old.unlink()
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    (app / name).write_bytes(data)
    return str(app)


def _load_app(app_dir: str) -> None:
    """Load the manifest; a valid one must make a worker's configuration and environment."""
    started = time.monotonic()
    try:
        manifest, warnings = load_app_manifest(
            app_dir,
            environ={"HOME": "/home/x"},
            body_size_default=10 * 1024 * 1024,
            body_size_max=100 * 1024 * 1024,
            app_label="fuzz@1.0.0",
        )
    except ManifestError as error:
        line = str(error)
        assert line.startswith('Invalid manifest for app "fuzz@1.0.0": ')
        assert len(line.splitlines()) == 1  # no line break of any kind
    else:
        assert manifest.timeout > 0 and manifest.max_body_size > 0
        assert all(isinstance(w, str) and "\n" not in w for w in warnings)
        json.loads(worker_config(manifest))
        env, _ = build_worker_env(
            app_dir=app_dir,
            entrypoint="app.py",
            worker_id="w1",
            manifest=manifest,
            runtime_env={},
            runtime={},
            deps_dir=None,
        )
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    assert time.monotonic() - started < SECONDS


def _dump(document: object) -> str:
    return yaml.safe_dump(document, allow_unicode=True).replace(HUGE, "0x" + "f" * 5000)


@FUZZ
@given(document=DOCUMENTS)
# found by this test: a line break in a value broke the error line; a body limit of 0
@example(document={"lowMemory": "\n"})
@example(document={"maxBodySize": "\n"})
@example(document={"maxBodySize": 0})
@example(document={"maxRequests": "\n"})
@example(document={"timeout": "\u2028"})
def test_any_document_shape_is_an_app_manifest_or_one_clear_error(tmp_path, document):
    _load_app(_app(tmp_path, _dump(document)))


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300))
def test_any_text_is_an_app_manifest_or_one_clear_error(tmp_path, text):
    _load_app(_app(tmp_path, text))
    _load_app(_app(tmp_path, text, "pyproject.toml"))


@pytest.mark.parametrize("text", HOSTILE_YAML, ids=range(len(HOSTILE_YAML)))
def test_yaml_traps_are_refused_quickly_or_read_as_data(tmp_path, text):
    _load_app(_app(tmp_path, text))
    _, problem = read_manifest(_app(tmp_path, text) + "/manifest.yaml", {})
    assert problem is None or ("\n" not in problem and problem.startswith('Plugin "'))


def test_a_deep_or_bombed_manifest_says_why(tmp_path):
    with pytest.raises(ManifestError, match=f"nested more than {MAX_DEPTH} levels deep"):
        load_app_manifest(
            _app(tmp_path, "a: " + "[" * 200 + "]" * 200),
            environ={},
            body_size_default=1,
            body_size_max=1,
            app_label="x",
        )
    with pytest.raises(ManifestError, match="more than 100000 values"):
        load_app_manifest(
            _app(tmp_path, HOSTILE_YAML[2]),
            environ={},
            body_size_default=1,
            body_size_max=1,
            app_label="x",
        )
    with pytest.raises(ManifestError, match="a number larger than 64 bits"):
        load_app_manifest(
            _app(tmp_path, "maxRequests: 0x" + "f" * 5000),
            environ={},
            body_size_default=1,
            body_size_max=1,
            app_label="x",
        )
    with pytest.raises(ManifestError, match=r"pyproject\.toml: invalid TOML: nested more than"):
        load_app_manifest(
            _app(tmp_path, "a = " + "[" * 5000, "pyproject.toml"),
            environ={},
            body_size_default=1,
            body_size_max=1,
            app_label="x",
        )


# -- plugin manifests -------------------------------------------------------------------------

ENV_TEXT = st.text(max_size=20) | st.sampled_from(["[1,2", "{", "1e999", "true", "NaN", "[]"])
SCHEMAS = st.dictionaries(
    st.text(min_size=1, max_size=6) | st.sampled_from(["timeout", "enabled"]),
    st.fixed_dictionaries(
        {"env": st.just("FUZZ_VAR")},
        optional={
            "type": st.sampled_from(["boolean", "integer", "number", "array", "object", "x"])
            | VALUES,
            "default": VALUES,
        },
    )
    | VALUES,
    max_size=3,
)


@FUZZ
@given(document=DOCUMENTS, schema=SCHEMAS | VALUES, env=ENV_TEXT)
def test_any_plugin_manifest_is_a_plugin_or_one_clear_error(tmp_path, document, schema, env):
    if isinstance(document, dict) and "config" not in document:
        document = {**document, "config": schema}
    path = _app(tmp_path, _dump(document))
    started = time.monotonic()
    read, problem = read_manifest(path + "/manifest.yaml", {"FUZZ_VAR": env})
    if problem is not None:
        assert "\n" not in problem and read == {}
        return
    try:
        manifest = parse_plugin_manifest(read, label="fuzzed", environ={"FUZZ_VAR": env})
        check_base(manifest.name, manifest.base, reserved_bases())
    except PluginError as error:
        assert "\n" not in str(error) and str(error).startswith('Plugin "')
    else:
        assert isinstance(manifest.name, str) and isinstance(manifest.settings, dict)
    assert time.monotonic() - started < SECONDS


@pytest.mark.parametrize(
    ("document", "label"),
    [({"name": "a\nb"}, "x"), ({"name": "p", "base": "/a\u2028b"}, "x"), ({}, "dir\nx")],
    ids=["name", "base", "label"],
)
def test_a_plugin_manifest_error_with_a_line_break_in_it_stays_one_line(document, label):
    with pytest.raises(PluginError) as raised:
        manifest = parse_plugin_manifest(document, label=label, environ={})
        check_base(manifest.name, manifest.base, reserved_bases())
    line = str(raised.value)
    assert line.startswith('Plugin "') and len(line.splitlines()) == 1
