"""
Plugin manifests: the fields of SPEC §5, the settings a plugin receives, and
the checks on its mount path.

A manifest is read as a document (a dict, already C{${VAR}}-interpolated by
discovery), then its C{config:} schema is applied (each setting read env var
-> manifest -> default, so an environment variable can also switch
C{enabled} or move C{base}), then the fields are validated.  Every key that
is not a manifest field is a plugin setting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, frozen

from buntime.plugins.publicroutes import PublicRoutes
from buntime.units import quoted

MANIFEST_FIELDS = frozenset(
    {
        "name",
        "base",
        "enabled",
        "entrypoint",
        "pluginEntry",
        "dependencies",
        "optionalDependencies",
        "publicRoutes",
        "menus",
        "env",
        "config",
    }
)
"""Keys with a meaning for the runtime; every other key is a plugin setting."""

DEFAULT_ENTRY = "plugin.py"
RESERVED_BASES = ("/api", "/health", "/.well-known")
_BASE = re.compile(r"^/[A-Za-z0-9_-]+$")


class PluginError(Exception):
    """A plugin cannot be loaded; the message is one line meant for the user."""


@frozen
class PluginManifest:
    """
    A plugin's validated manifest.  C{raw} is the resolved document (schema
    applied), unknown keys included.
    """

    name: str
    base: str | None = None
    enabled: bool = True
    entrypoint: str | None = None
    plugin_entry: str = DEFAULT_ENTRY
    dependencies: tuple[str, ...] = ()
    optional_dependencies: tuple[str, ...] = ()
    public_routes: PublicRoutes = field(factory=PublicRoutes)
    menus: tuple[Mapping[str, Any], ...] = ()
    env: Mapping[str, str] = field(factory=dict)
    config_schema: Mapping[str, Mapping[str, Any]] = field(factory=dict)
    raw: Mapping[str, Any] = field(factory=dict)

    @property
    def short_name(self) -> str:
        """C{@buntime/plugin-keyval} -> C{keyval}: the name in log contexts."""
        return short_name(self.name)

    @property
    def settings(self) -> dict[str, Any]:
        """What the plugin's factory and C{ctx.config} get: the non-field keys."""
        return {key: value for key, value in self.raw.items() if key not in MANIFEST_FIELDS}

    def describe(self) -> dict[str, Any]:
        """The C{/api/plugins/loaded} entry for this plugin."""
        return {
            "name": self.name,
            "base": self.base,
            "dependencies": list(self.dependencies),
            "optionalDependencies": list(self.optional_dependencies),
            "menus": [dict(menu) for menu in self.menus],
        }


def short_name(name: str) -> str:
    """The last segment of a (scoped) name without a C{plugin-} prefix."""
    last = name.rsplit("/", 1)[-1]
    return last[len("plugin-") :] if last.startswith("plugin-") and len(last) > 7 else last


def manifest_name(document: Mapping[str, Any]) -> str | None:
    """The C{name} of a manifest document when it is a non-empty string."""
    name = document.get("name")
    return name.strip() if isinstance(name, str) and name.strip() else None


# -- the config schema --------------------------------------------------------


def _schema(value: object, where: str) -> dict[str, dict[str, Any]]:
    """C{config:} as C{{key: {type, label, description, default, env}}}."""
    if value is None:
        return {}
    entries: dict[str, dict[str, Any]] = {}
    if isinstance(value, Mapping):
        for key, spec in value.items():
            entries[str(key)] = dict(spec) if isinstance(spec, Mapping) else {"default": spec}
        return entries
    if isinstance(value, list):
        for spec in value:
            key = spec.get("key", spec.get("name")) if isinstance(spec, Mapping) else None
            if not isinstance(key, str):
                raise PluginError(f"{where}: each config entry needs a key")
            entries[key] = dict(spec)
        return entries
    raise PluginError(f"{where}: config must be a map of settings")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(text: str, kind: object, example: object = None) -> Any:
    """
    An environment variable's text as the setting's C{type} (boolean,
    number, integer, string, array, object), or as the type of C{example}
    when the schema names none.

    @raise ValueError: the text does not fit the type.
    """
    if kind is None:
        kind = _KIND_OF.get(type(example), "string")
    reader = _READERS.get(str(kind).lower())
    return text if reader is None else reader(text, text.strip())


_KIND_OF = {bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}


def _boolean(text: str, stripped: str) -> bool:
    if stripped.lower() in _TRUE | _FALSE:
        return stripped.lower() in _TRUE
    raise ValueError(f'must be true or false, not "{text}"')


def _integer(text: str, stripped: str) -> int:
    try:
        return int(stripped)
    except ValueError:
        raise ValueError(f'must be an integer, not "{text}"') from None


def _number(text: str, stripped: str) -> int | float:
    try:
        number = float(stripped)
    except ValueError:
        raise ValueError(f'must be a number, not "{text}"') from None
    return int(number) if number.is_integer() and "." not in stripped else number


def _array(text: str, stripped: str) -> list[Any]:
    if stripped.startswith("["):
        try:
            return list(json.loads(stripped))
        except ValueError:
            raise ValueError(f'must be a JSON list or comma-separated, not "{text}"') from None
    return [item.strip() for item in stripped.split(",") if item.strip()]


def _object(text: str, stripped: str) -> Any:
    try:
        return json.loads(stripped)
    except ValueError:
        raise ValueError("must be JSON") from None


_READERS: dict[str, Callable[[str, str], Any]] = {
    "boolean": _boolean,
    "bool": _boolean,
    "integer": _integer,
    "int": _integer,
    "number": _number,
    "float": _number,
    "array": _array,
    "list": _array,
    "object": _object,
    "json": _object,
    "map": _object,
}
"""How C{coerce} reads each type a setting's schema may name (anything else: the text)."""


def resolve_settings(
    document: Mapping[str, Any], environ: Mapping[str, str], where: str
) -> dict[str, Any]:
    """
    The document with every C{config:} schema entry resolved: the entry's
    C{env} variable when set, else the document's own value, else the
    entry's C{default}.
    """
    resolved = dict(document)
    for key, spec in _schema(document.get("config"), where).items():
        variable = spec.get("env")
        if isinstance(variable, str) and variable in environ:
            example = document.get(key, spec.get("default"))
            try:
                resolved[key] = coerce(environ[variable], spec.get("type"), example)
            except ValueError as error:
                raise PluginError(f"{where}: environment variable {variable}: {error}") from None
        elif key not in document and "default" in spec:
            resolved[key] = spec["default"]
    return resolved


# -- fields ---------------------------------------------------------------------


def _names(value: object, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PluginError(f"{where}: {key} must be a list of plugin names")
    return tuple(v.strip() for v in value if v.strip())


def _bool(value: object, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise PluginError(f"{where}: {key} must be true or false, not {value!r}")


def _optional_string(value: object, key: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PluginError(f"{where}: {key} must be a string")
    return value.strip()


def _menus(value: object, where: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(m, Mapping) for m in value):
        raise PluginError(f"{where}: menus must be a list of {{title, icon, path, items}} maps")
    return tuple(value)


def _env(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PluginError(f"{where}: env must be a map of NAME: value")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def parse_plugin_manifest(
    document: Mapping[str, Any], *, label: str, environ: Mapping[str, str]
) -> PluginManifest:
    """
    Validate an interpolated manifest document.  C{label} names the plugin
    when the manifest has no name (its directory).

    @raise PluginError: with the SPEC message for a missing name, else one
        line naming the plugin and the field.
    """
    name = manifest_name(document)
    if name is None:
        given = document.get("name")
        if given is not None and not isinstance(given, str):  # YAML's `name: off` is False
            raise PluginError(
                f"Plugin {quoted(label)} manifest: name must be a string, not {given!r}"
                " (quote it in YAML)"
            )
        raise PluginError(f"Plugin {quoted(label)} manifest is missing required field: name")
    if not name.isprintable():  # it names the plugin in every line about it
        raise PluginError(f"Plugin {quoted(name)} manifest: name must be printable (no line break)")
    where = f'Plugin "{name}" manifest'
    raw = resolve_settings(document, environ, where)
    base = _optional_string(raw.get("base"), "base", where)
    if base is not None and len(base) > 1:
        base = base.rstrip("/")
    try:
        public_routes = PublicRoutes.parse(raw.get("publicRoutes"))
    except ValueError as error:
        raise PluginError(f"{where}: publicRoutes: {error}") from None
    entry = _optional_string(raw.get("pluginEntry"), "pluginEntry", where) or DEFAULT_ENTRY
    return PluginManifest(
        name=name,
        base=base,
        enabled=_bool(raw.get("enabled", True), "enabled", where),
        entrypoint=_optional_string(raw.get("entrypoint"), "entrypoint", where),
        plugin_entry=entry,
        dependencies=_names(raw.get("dependencies"), "dependencies", where),
        optional_dependencies=_names(
            raw.get("optionalDependencies"), "optionalDependencies", where
        ),
        public_routes=public_routes,
        menus=_menus(raw.get("menus"), where),
        env=_env(raw.get("env"), where),
        config_schema=_schema(raw.get("config"), where),
        raw=raw,
    )


def reserved_bases(api_prefix: str = "") -> tuple[str, ...]:
    """The bases no plugin may take: the core API's (C{/api} or the prefix), C{/health}, ..."""
    first = api_prefix.rstrip("/") or "/api"
    return (first, *RESERVED_BASES[1:])


def check_base(name: str, base: str | None, reserved: tuple[str, ...]) -> None:
    """
    @raise PluginError: C{base} is reserved, or not one path segment.
    """
    if base is None:
        return
    if base in reserved or any(base.startswith(r + "/") for r in reserved):
        raise PluginError(
            f"Plugin {quoted(name)} cannot use reserved path {quoted(base)}. "
            f"Reserved paths: {', '.join(reserved)}"
        )
    if not _BASE.match(base):
        raise PluginError(
            f"Plugin {quoted(name)} has an invalid base {quoted(base)}: it must be one path"
            ' segment like "/metrics" (letters, digits, "_" and "-")'
        )
