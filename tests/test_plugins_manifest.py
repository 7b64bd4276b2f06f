"""Plugin manifests: fields, settings (env -> manifest -> default), bases, public routes."""

from __future__ import annotations

import re

import pytest

from buntime.plugins.manifest import (
    PluginError,
    check_base,
    coerce,
    parse_plugin_manifest,
    reserved_bases,
    short_name,
)
from buntime.plugins.publicroutes import PublicRoutes, compile_pattern


def parse(document, environ=None):
    return parse_plugin_manifest(document, label="/plugins/x", environ=environ or {})


def test_missing_name_names_the_directory():
    with pytest.raises(PluginError) as caught:
        parse({"base": "/x"})
    assert str(caught.value) == 'Plugin "/plugins/x" manifest is missing required field: name'


@pytest.mark.parametrize("name", [None, "", "   "])
def test_blank_name_is_missing(name):
    with pytest.raises(PluginError, match=re.escape("missing required field: name")):
        parse({"name": name})


@pytest.mark.parametrize(("name", "shown"), [(3, "3"), (False, "False"), (["a"], "['a']")])
def test_a_name_that_is_not_text_says_so(name, shown):
    """YAML reads `name: off` as false and `name: 123` as a number: the name is there."""
    with pytest.raises(PluginError) as caught:
        parse({"name": name})
    assert str(caught.value) == (
        f'Plugin "/plugins/x" manifest: name must be a string, not {shown} (quote it in YAML)'
    )


def test_defaults():
    manifest = parse({"name": "p"})
    assert manifest.base is None
    assert manifest.enabled is True
    assert manifest.plugin_entry == "plugin.py"
    assert manifest.dependencies == ()
    assert manifest.optional_dependencies == ()
    assert not manifest.public_routes
    assert manifest.menus == ()
    assert manifest.settings == {}


def test_fields_and_settings():
    manifest = parse(
        {
            "name": "@acme/plugin-keyval",
            "base": "/kv/",
            "enabled": "false",
            "entrypoint": "ui/index.html",
            "pluginEntry": "src/main.py",
            "dependencies": ["a"],
            "optionalDependencies": "b",
            "menus": [{"title": "KV", "path": "/kv"}],
            "env": {"X": 1},
            "ttl": 5,
            "nested": {"k": [1, 2]},
        }
    )
    assert manifest.base == "/kv"
    assert manifest.enabled is False
    assert manifest.entrypoint == "ui/index.html"
    assert manifest.plugin_entry == "src/main.py"
    assert manifest.dependencies == ("a",)
    assert manifest.optional_dependencies == ("b",)
    assert manifest.env == {"X": "1"}
    assert manifest.settings == {"ttl": 5, "nested": {"k": [1, 2]}}
    assert manifest.short_name == "keyval"
    assert manifest.describe() == {
        "name": "@acme/plugin-keyval",
        "base": "/kv",
        "dependencies": ["a"],
        "optionalDependencies": ["b"],
        "menus": [{"title": "KV", "path": "/kv"}],
    }


@pytest.mark.parametrize(
    "document, message",
    [
        ({"enabled": "maybe"}, "enabled must be true or false"),
        ({"dependencies": [1]}, "dependencies must be a list of plugin names"),
        ({"menus": "x"}, "menus must be a list"),
        ({"env": ["A"]}, "env must be a map"),
        ({"base": 5}, "base must be a string"),
        ({"publicRoutes": {"FETCH": ["/x"]}}, "publicRoutes: unknown method 'FETCH'"),
        ({"publicRoutes": ["health"]}, "each pattern must be a path starting with /"),
        ({"config": "nope"}, "config must be a map of settings"),
    ],
)
def test_invalid_fields_name_the_plugin_and_field(document, message):
    with pytest.raises(PluginError) as caught:
        parse({"name": "p", **document})
    assert str(caught.value).startswith('Plugin "p" manifest: ')
    assert message in str(caught.value)


SCHEMA = {
    "greeting": {"type": "string", "env": "GREETING", "default": "hello"},
    "limit": {"type": "number", "env": "LIMIT", "default": 10},
    "verbose": {"type": "boolean", "env": "VERBOSE", "default": False},
    "hosts": {"type": "array", "env": "HOSTS", "default": []},
    "untyped": {"env": "UNTYPED"},
}


def test_settings_come_from_env_then_manifest_then_default():
    document = {"name": "p", "config": SCHEMA, "limit": 20}
    assert parse(document).settings == {
        "greeting": "hello",
        "limit": 20,
        "verbose": False,
        "hosts": [],
    }
    environ = {"GREETING": "hi", "LIMIT": "30", "VERBOSE": "yes", "HOSTS": "a, b", "UNTYPED": "u"}
    assert parse(document, environ).settings == {
        "greeting": "hi",
        "limit": 30,
        "verbose": True,
        "hosts": ["a", "b"],
        "untyped": "u",
    }


def test_schema_as_a_list_of_entries():
    document = {"name": "p", "config": [{"key": "size", "default": 3, "env": "SIZE"}]}
    assert parse(document).settings == {"size": 3}
    assert parse(document, {"SIZE": "4"}).settings == {"size": 4}


def test_schema_env_can_switch_manifest_fields():
    document = {"name": "p", "config": {"enabled": {"type": "boolean", "env": "P_ON"}}}
    assert parse(document).enabled is True
    assert parse(document, {"P_ON": "false"}).enabled is False


def test_invalid_env_value_names_the_variable():
    with pytest.raises(PluginError) as caught:
        parse({"name": "p", "config": SCHEMA}, {"LIMIT": "lots"})
    assert str(caught.value) == (
        'Plugin "p" manifest: environment variable LIMIT: must be a number, not "lots"'
    )


@pytest.mark.parametrize(
    "text, kind, example, expected",
    [
        ("true", "boolean", None, True),
        ("0", "bool", None, False),
        ("12", "integer", None, 12),
        ("1.5", "number", None, 1.5),
        ('["a", "b"]', "array", None, ["a", "b"]),
        ('{"a": 1}', "object", None, {"a": 1}),
        ("7", None, 3, 7),
        ("on", None, False, True),
        ("x,y", None, ["z"], ["x", "y"]),
        ("text", None, None, "text"),
    ],
)
def test_coerce(text, kind, example, expected):
    assert coerce(text, kind, example) == expected


@pytest.mark.parametrize(
    "name, short",
    [
        ("@buntime/plugin-metrics", "metrics"),
        ("@acme/keyval", "keyval"),
        ("plugin-logs", "logs"),
        ("hello", "hello"),
        ("plugin-", "plugin-"),
    ],
)
def test_short_name(name, short):
    assert short_name(name) == short


@pytest.mark.parametrize("base", ["/api", "/health", "/.well-known", "/api/x"])
def test_reserved_bases_exact_message(base):
    with pytest.raises(PluginError) as caught:
        check_base("p", base, reserved_bases())
    assert str(caught.value) == (
        f'Plugin "p" cannot use reserved path "{base}". Reserved paths: /api, /health, /.well-known'
    )


def test_api_prefix_is_the_reserved_base_then():
    reserved = reserved_bases("/_")
    assert reserved == ("/_", "/health", "/.well-known")
    with pytest.raises(
        PluginError, match=re.escape('cannot use reserved path "/_". Reserved paths: /_,')
    ):
        check_base("p", "/_", reserved)
    check_base("p", "/api", reserved)


@pytest.mark.parametrize("base", ["metrics", "/a/b", "/", "/sp ace", "/ü"])
def test_invalid_bases(base):
    with pytest.raises(PluginError) as caught:
        check_base("p", base, reserved_bases())
    assert str(caught.value) == (
        f'Plugin "p" has an invalid base "{base}": it must be one path segment like'
        ' "/metrics" (letters, digits, "_" and "-")'
    )


@pytest.mark.parametrize("base", [None, "/metrics", "/A_b-9"])
def test_valid_bases(base):
    check_base("p", base, reserved_bases())


# -- public routes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, path, matches",
    [
        ("/health", "/health", True),
        ("/health", "/health/", True),
        ("/health", "/healthz", False),
        ("/health", "/health/x", False),
        ("/api/*/info", "/api/v1/info", True),
        ("/api/*/info", "/api/v1/v2/info", False),
        ("/api/*/info", "/api//info", False),
        ("/api/public/**", "/api/public", True),
        ("/api/public/**", "/api/public/a/b/c", True),
        ("/api/public/**", "/api/publicity", False),
        ("/a/**/z", "/a/z", True),
        ("/a/**/z", "/a/b/c/z", True),
        ("/a/**/z", "/a/b/c", False),
        ("/items/:id", "/items/42", True),
        ("/items/:id", "/items", False),
        ("/files/*.css", "/files/site.css", True),
        ("/files/*.css", "/files/site.js", False),
        ("/", "/", True),
        ("/", "/x", False),
        ("/**", "/anything/at/all", True),
        ("/a.b", "/aXb", False),
    ],
)
def test_pattern(pattern, path, matches):
    assert bool(compile_pattern(pattern).match(path)) is matches


def test_public_routes_by_method():
    routes = PublicRoutes.parse({"ALL": ["/health"], "GET": ["/docs/**"], "post": "/hook"})
    assert routes.matches("GET", "/health")
    assert routes.matches("DELETE", "/health")
    assert routes.matches("GET", "/docs/a")
    assert routes.matches("HEAD", "/docs/a")
    assert not routes.matches("POST", "/docs/a")
    assert routes.matches("POST", "/hook")
    assert not routes.matches("GET", "/hook")


def test_public_routes_list_is_every_method():
    routes = PublicRoutes.parse(["/a", "/b/**"])
    assert routes.matches("PUT", "/b/c")
    assert not routes.matches("GET", "/c")
    assert not PublicRoutes.parse(None)
    assert not PublicRoutes.parse(None).matches("GET", "/")
