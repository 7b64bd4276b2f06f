"""
App manifests: reading, interpolation, defaults and SPEC §2 validation.
"""

from __future__ import annotations

import pytest
import yaml

from buntime import manifest
from buntime.manifest import (
    AppManifest,
    ManifestError,
    find_manifest,
    interpolate,
    load_app_manifest,
)

MB = 1024 * 1024


def load(app_dir, environ=None, body_size_default=10 * MB, body_size_max=100 * MB):
    return load_app_manifest(
        str(app_dir),
        environ=environ or {},
        body_size_default=body_size_default,
        body_size_max=body_size_max,
        app_label="hello@1.0.0",
    )


def write(app_dir, text, name="manifest.yaml"):
    (app_dir / name).write_text(text)


def error_for(app_dir, text, **kwargs) -> ManifestError:
    write(app_dir, text)
    with pytest.raises(ManifestError) as info:
        load(app_dir, **kwargs)
    return info.value


def test_no_manifest_means_defaults(tmp_path):
    manifest, warnings = load(tmp_path, body_size_default=5 * MB)
    assert manifest == AppManifest(max_body_size=5 * MB)
    assert warnings == []
    # a long-lived worker by default (SPEC §2), unlike the Bun original's ttl 0
    assert (manifest.timeout, manifest.ttl, manifest.idle_timeout) == (30.0, 900.0, 60.0)
    assert (manifest.max_requests, manifest.max_concurrency) == (1000, 100)
    assert (manifest.max_instances, manifest.max_queue) == (1, 100)
    assert manifest.inject_base is None  # static apps: yes; apps with code: no
    assert manifest.low_memory is manifest.auto_install is False
    assert manifest.env == {} and manifest.raw == {} and manifest.public_routes is None
    assert not manifest.ephemeral


def test_empty_manifest_means_defaults(tmp_path):
    write(tmp_path, "")
    manifest, _ = load(tmp_path)
    assert manifest == AppManifest()


def test_every_field(tmp_path):
    write(
        tmp_path,
        """
name: hello
version: 1.0.0
entrypoint: app.py:application
timeout: 10s
ttl: 5m
idleTimeout: 1m
maxRequests: 50
maxBodySize: 2mb
maxMemory: 256MB
lowMemory: true
autoInstall: yes
injectBase: false
env:
  GREETING: hi
  COUNT: 3
  DEBUG: true
  EMPTY:
publicRoutes: [/health, /api/public/**]
maxConcurrency: 8
maxInstances: 2
maxQueue: 20
custom:
  nested: [1, 2]
""",
    )
    manifest, warnings = load(tmp_path)
    assert warnings == []
    assert manifest.name == "hello" and manifest.version == "1.0.0"
    assert manifest.entrypoint == "app.py:application"
    assert (manifest.timeout, manifest.ttl, manifest.idle_timeout) == (10.0, 300.0, 60.0)
    assert manifest.max_requests == 50
    assert manifest.max_body_size == 2 * MB
    assert manifest.max_memory == 256 * MB
    assert manifest.low_memory and manifest.auto_install and not manifest.inject_base
    assert manifest.env == {"GREETING": "hi", "COUNT": "3", "DEBUG": "true", "EMPTY": ""}
    assert manifest.public_routes == {"ALL": ("/health", "/api/public/**")}
    assert (manifest.max_concurrency, manifest.max_instances, manifest.max_queue) == (8, 2, 20)
    assert manifest.raw["custom"] == {"nested": [1, 2]}
    assert manifest.raw["timeout"] == "10s"
    assert not manifest.ephemeral


def test_numbers_are_seconds_and_bytes(tmp_path):
    write(tmp_path, "timeout: 1.5\nttl: 60\nidleTimeout: 2\nmaxBodySize: 1024\n")
    manifest, _ = load(tmp_path)
    assert (manifest.timeout, manifest.ttl, manifest.idle_timeout) == (1.5, 60.0, 2.0)
    assert manifest.max_body_size == 1024


@pytest.mark.parametrize(
    "text,size",
    [("1gb", 1024 * MB), ("64mb", 64 * MB), ("1048576", MB), ("0", None), ("'0mb'", None)],
)
def test_max_memory_is_a_size_and_zero_is_no_limit(tmp_path, text, size):
    write(tmp_path, f"maxMemory: {text}\n")
    assert load(tmp_path)[0].max_memory == size
    write(tmp_path, "timeout: 1s\n")
    assert load(tmp_path)[0].max_memory is None  # the default: no limit


def test_public_routes_map(tmp_path):
    write(tmp_path, "publicRoutes:\n  get: [/a]\n  ALL: /b\n  POST: [/c/*]\n")
    manifest, _ = load(tmp_path)
    assert manifest.public_routes == {"GET": ("/a",), "ALL": ("/b",), "POST": ("/c/*",)}


def test_yml_and_pyproject(tmp_path):
    write(tmp_path, "timeout: 5s\n", name="manifest.yml")
    assert load(tmp_path)[0].timeout == 5.0
    assert find_manifest(str(tmp_path)).endswith("manifest.yml")
    write(tmp_path, "timeout: 7s\n")
    manifest, warnings = load(tmp_path)
    assert manifest.timeout == 7.0
    assert warnings == ["manifest.yml ignored: manifest.yaml takes precedence"]


def test_pyproject_tool_buntime(tmp_path):
    write(
        tmp_path,
        """
[project]
name = "hello"
version = "2.0.0"

[tool.buntime]
timeout = "3s"
maxQueue = 5
env = { A = "b" }
""",
        name="pyproject.toml",
    )
    manifest, _ = load(tmp_path)
    assert (manifest.name, manifest.version) == ("hello", "2.0.0")
    assert (manifest.timeout, manifest.max_queue, manifest.env) == (3.0, 5, {"A": "b"})
    assert manifest.raw["name"] == "hello"


def test_pyproject_without_tool_table(tmp_path):
    write(tmp_path, '[project]\nname = "x"\n', name="pyproject.toml")
    manifest, _ = load(tmp_path)
    assert manifest.name == "x" and manifest.timeout == 30.0


def test_manifest_yaml_beats_pyproject(tmp_path):
    write(tmp_path, '[tool.buntime]\ntimeout = "3s"\n', name="pyproject.toml")
    write(tmp_path, "timeout: 4s\n")
    assert load(tmp_path)[0].timeout == 4.0


def test_invalid_pyproject(tmp_path):
    write(tmp_path, "[tool.buntime\n", name="pyproject.toml")
    with pytest.raises(ManifestError, match=r"pyproject\.toml: invalid TOML"):
        load(tmp_path)
    write(tmp_path, "[tool]\nbuntime = 3\n", name="pyproject.toml")
    with pytest.raises(ManifestError) as info:
        load(tmp_path)
    assert info.value.field == "tool.buntime"


# -- interpolation --------------------------------------------------------------------


def test_interpolation_everywhere(tmp_path):
    write(
        tmp_path,
        """
timeout: ${TIMEOUT}
maxQueue: ${QUEUE}
lowMemory: ${LOW}
env:
  URL: "http://${HOST}:${PORT}/x"
  MISSING: "[${NOPE}]"
  DEFAULTED: "${NOPE:-fallback}"
extra: ["${HOST}", {k: "${HOST}"}]
""",
    )
    environ = {"TIMEOUT": "2s", "QUEUE": "7", "LOW": "true", "HOST": "db", "PORT": "5432"}
    manifest, _ = load(tmp_path, environ=environ)
    assert (manifest.timeout, manifest.max_queue, manifest.low_memory) == (2.0, 7, True)
    assert manifest.env == {"URL": "http://db:5432/x", "MISSING": "[]", "DEFAULTED": "fallback"}
    assert manifest.raw["extra"] == ["db", {"k": "db"}]


def test_interpolate_leaves_keys_and_non_strings():
    environ = {"A": "1"}
    assert interpolate({"${A}": "${A}", "n": 3, "b": True, "x": None}, environ) == {
        "${A}": "1",
        "n": 3,
        "b": True,
        "x": None,
    }
    assert interpolate("$A ${A} $${A} ${ A}", environ) == "$A 1 $1 ${ A}"


# -- errors ------------------------------------------------------------------------


def test_error_message_format(tmp_path):
    error = error_for(tmp_path, "timeout: abc\n")
    assert error.app == "hello@1.0.0" and error.field == "timeout"
    assert str(error).startswith(
        'Invalid manifest for app "hello@1.0.0": timeout: invalid duration: "abc"'
    )


@pytest.mark.parametrize(
    "text,field,message",
    [
        ("timeout: abc", "timeout", "invalid duration"),
        ("timeout: -1", "timeout", "invalid duration"),
        ("timeout: 0", "timeout", "must be greater than 0"),
        ("ttl: -5s", "ttl", "invalid duration"),
        ("idleTimeout: [1]", "idleTimeout", "invalid duration"),
        ("ttl: true", "ttl", "invalid duration"),
        ("maxBodySize: huge", "maxBodySize", "invalid size"),
        ("maxMemory: lots", "maxMemory", "invalid size"),
        ("maxMemory: -1mb", "maxMemory", "invalid size"),
        ("maxMemory: 256", "maxMemory", 'give a unit, like "256mb"'),
        ("maxMemory: 500kb", "maxMemory", "the least is 1mb"),
        ("maxRequests: 0", "maxRequests", "positive integer"),
        ("maxRequests: -3", "maxRequests", "positive integer"),
        ("maxRequests: 1.5", "maxRequests", "positive integer"),
        ("maxRequests: lots", "maxRequests", "positive integer"),
        ("maxConcurrency: true", "maxConcurrency", "positive integer"),
        ("maxInstances: 0", "maxInstances", "positive integer"),
        ("maxQueue: []", "maxQueue", "positive integer"),
        ("lowMemory: maybe", "lowMemory", "true or false"),
        ("autoInstall: 2", "autoInstall", "true or false"),
        ("injectBase: {}", "injectBase", "true or false"),
        ("env: [A, B]", "env", "must be a map"),
        ("env: hello", "env", "must be a map"),
        ("env: {A: {b: c}}", "env", 'value of "A" must be a string'),
        ("env: {A: [1]}", "env", 'value of "A" must be a string'),
        ('env: {"A=B": c}', "env", "invalid variable name"),
        ("publicRoutes: 3", "publicRoutes", "list of path patterns"),
        ("publicRoutes: [health]", "publicRoutes", "starting with /"),
        ("publicRoutes: {FETCH: [/a]}", "publicRoutes", "unknown method"),
        ("name: [a]", "name", "must be a string"),
        ("entrypoint: ''", "entrypoint", "must not be empty"),
        ("entrypoint: {a: b}", "entrypoint", "must be a string"),
    ],
)
def test_invalid_fields(tmp_path, text, field, message):
    error = error_for(tmp_path, text + "\n")
    assert error.field == field
    assert message in str(error)
    assert str(error).startswith(f'Invalid manifest for app "hello@1.0.0": {field}: ')


def test_env_value_error_names_every_type_env_takes(tmp_path):
    """Numbers and booleans are taken too, so the error does not ask for a string only."""
    error = error_for(tmp_path, "env: {L: [1, 2]}\n")
    assert 'env: the value of "L" must be a string, a number or a boolean, not a list' in str(error)


def test_env_value_never_in_error(tmp_path):
    error = error_for(tmp_path, "env: {SECRET_TOKEN: {v: hunter2}}\n")
    assert "hunter2" not in str(error)


@pytest.mark.parametrize(
    "text,message",
    [
        ("timeout: [1\n", "invalid YAML at line"),
        ("a: b: c\n", "invalid YAML at line 1"),
        ("- a\n- b\n", "top level must be a map"),
        ("just a string\n", "top level must be a map"),
        ("42\n", "top level must be a map"),
    ],
)
def test_broken_documents(tmp_path, text, message):
    error = error_for(tmp_path, text)
    assert error.field is None
    assert message in str(error)
    assert str(error).startswith('Invalid manifest for app "hello@1.0.0": manifest.yaml: ')


# -- policy rules ---------------------------------------------------------------------


def test_ttl_must_cover_timeout(tmp_path):
    error = error_for(tmp_path, "ttl: 10s\ntimeout: 30s\n")
    assert error.field == "ttl"
    assert "ttl (10s) must be at least timeout (30s)" in str(error)


def test_idle_timeout_must_cover_timeout(tmp_path):
    error = error_for(tmp_path, "ttl: 5m\ntimeout: 30s\nidleTimeout: 10s\n")
    assert error.field == "idleTimeout"
    assert "idleTimeout (10s) must be at least timeout (30s)" in str(error)


def test_idle_timeout_longer_than_ttl_is_lowered(tmp_path):
    write(tmp_path, "ttl: 1m\nidleTimeout: 5m\n")
    manifest, warnings = load(tmp_path)
    assert manifest.idle_timeout == 60.0
    assert warnings == ["idleTimeout (300s) is longer than ttl (60s); lowered to 60s"]


def test_ephemeral_apps_skip_the_ttl_rules(tmp_path):
    write(tmp_path, "ttl: 0\ntimeout: 30s\nidleTimeout: 500ms\n")
    manifest, warnings = load(tmp_path)
    assert (manifest.ttl, manifest.idle_timeout, warnings) == (0.0, 0.5, [])


def test_a_long_timeout_alone_keeps_the_defaults_valid(tmp_path):
    write(tmp_path, "timeout: 20m\n")
    manifest, warnings = load(tmp_path)
    assert (manifest.ttl, manifest.idle_timeout, warnings) == (1200.0, 1200.0, [])
    write(tmp_path, "timeout: 2m\n")
    manifest, warnings = load(tmp_path)
    assert (manifest.ttl, manifest.idle_timeout, warnings) == (900.0, 120.0, [])


def test_ttl_equal_to_timeout_is_fine(tmp_path):
    write(tmp_path, "ttl: 30s\ntimeout: 30s\nidleTimeout: 30s\n")
    manifest, warnings = load(tmp_path)
    assert (manifest.ttl, manifest.idle_timeout, warnings) == (30.0, 30.0, [])


def test_max_body_size_is_capped(tmp_path):
    write(tmp_path, "maxBodySize: 200mb\n")
    manifest, warnings = load(tmp_path)
    assert manifest.max_body_size == 100 * MB
    assert warnings == ["maxBodySize (200mb) exceeds BODY_SIZE_MAX (100mb); capped to 100mb"]


def test_default_body_size_comes_from_the_caller(tmp_path):
    write(tmp_path, "timeout: 1s\n")
    assert load(tmp_path, body_size_default=MB)[0].max_body_size == MB


def test_null_values_mean_default(tmp_path):
    write(tmp_path, "timeout:\nenv:\n")
    manifest, _ = load(tmp_path)
    assert manifest.timeout == 30.0 and manifest.env == {}


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML was built without libyaml")
def test_manifests_are_read_with_libyaml_where_pyyaml_has_it() -> None:
    # A first request waits for its app's manifest: libyaml reads one about 8 times faster.
    assert manifest._LOADER is yaml.CSafeLoader
    assert manifest.parse_yaml("ttl: 30m\nenv: {A: b}\n") == {"ttl": "30m", "env": {"A": "b"}}
