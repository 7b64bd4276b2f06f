"""
App manifests: find, read, interpolate and validate them.

An app's settings live in C{manifest.yaml} (or C{manifest.yml}) in its
directory, or, when there is none, in C{[tool.buntime]} of its
C{pyproject.toml} (with C{name} and C{version} taken from C{[project]}).
Every field is optional.  C{${VAR}} in any string value is replaced from the
runtime's environment before validation (each field's parser is in
L{buntime.manifest_fields}).  Plugin manifests share the reading and
interpolation helpers here.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from attrs import evolve, field, frozen

from buntime.manifest_fields import FIELDS
from buntime.units import format_size

MANIFEST_FILES = ("manifest.yaml", "manifest.yml")
"""Manifest file names, in order of preference."""

PYPROJECT = "pyproject.toml"

DEFAULT_BODY_SIZE = 10 * 1024 * 1024
"""C{BODY_SIZE_DEFAULT} when the environment sets none (10mb)."""

MAX_DEPTH = 64
"""Deepest nesting of maps and lists a manifest may have (a real one has a few levels)."""
MAX_VALUES = 100_000
"""Most values a manifest may hold, YAML aliases counted each time they are used."""
MAX_INTEGER_BITS = 64
"""Largest integer a manifest may hold (YAML reads hex of any length)."""


class DocumentError(ValueError):
    """
    A manifest file that is not a usable document: C{str()} says why in one
    line; C{line} is where its syntax broke (1-based), when known.
    """

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(problem)
        self.line = line


class ManifestError(Exception):
    """
    An app's manifest cannot be used.  C{field} names the offending key (or
    is C{None} for problems with the file as a whole).
    """

    def __init__(self, app: str, field: str | None, message: str) -> None:
        super().__init__(app, field, message)
        self.app = app
        self.field = field
        self.message = message

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f'Invalid manifest for app "{self.app}": {where}{self.message}'


@frozen
class AppManifest:
    """
    An app's validated settings.  Durations are float seconds, sizes int
    bytes.  C{public_routes} maps C{ALL} or an HTTP method to path patterns
    (a plain list in the file becomes C{{"ALL": [...]}}).  C{raw} is the
    whole interpolated document, unknown keys included (for C{WORKER_CONFIG}).
    """

    name: str | None = None
    version: str | None = None
    entrypoint: str | None = None
    timeout: float = 30.0
    ttl: float = 15 * 60.0
    idle_timeout: float = 60.0
    max_requests: int = 1000
    max_body_size: int = DEFAULT_BODY_SIZE
    max_memory: int | None = None
    """Resident memory (bytes) past which a worker is recycled; C{None}: no limit."""
    low_memory: bool = False
    auto_install: bool = False
    inject_base: bool | None = None
    """C{None}: not given (static apps get the base, apps with code do not)."""
    env: Mapping[str, str] = field(factory=dict)
    env_allow: frozenset[str] = frozenset()
    """Sensitive-looking C{env} names the operator means to pass (upper case)."""
    public_routes: Mapping[str, tuple[str, ...]] | None = None
    max_concurrency: int = 100
    max_instances: int = 1
    max_queue: int = 100
    raw: Mapping[str, Any] = field(factory=dict)

    @property
    def ephemeral(self) -> bool:
        """C{ttl: 0}: a fresh worker per request."""
        return self.ttl == 0


# -- interpolation -----------------------------------------------------------

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """
    C{value} with C{${VAR}} replaced from C{environ} in every string, through
    nested maps and lists.  An unknown C{VAR} becomes C{""} (or the default
    in C{${VAR:-default}}).  Keys are left alone.
    """
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, Mapping):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [interpolate(item, environ) for item in value]
    return value


# -- reading -----------------------------------------------------------------


def find_manifest(app_dir: str) -> str | None:
    """The path of the file that configures C{app_dir}, or C{None}."""
    for name in (*MANIFEST_FILES, PYPROJECT):
        path = os.path.join(app_dir, name)
        if os.path.isfile(path):
            return path
    return None


def read_document(path: str, app_label: str) -> dict[str, Any]:
    """
    The settings map in the manifest file at C{path}, before interpolation:
    the YAML document, or C{[tool.buntime]} plus C{[project]} name/version
    of a C{pyproject.toml}.  An empty file is an empty map.

    @raise ManifestError: unreadable file, syntax error, or not a map.
    """
    filename = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ManifestError(app_label, None, f"{filename}: cannot read: {e.strerror}") from None
    if filename == PYPROJECT:
        return _pyproject_settings(data, app_label)
    try:
        document = parse_yaml(data)
    except DocumentError as e:
        raise ManifestError(app_label, None, f"{filename}: {e}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ManifestError(app_label, None, f"{filename}: the top level must be a map of settings")
    return document


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it (many times faster), else PyYAML's."""


def parse_yaml(data: bytes | str) -> Any:
    """
    The data of one YAML document (safe tags only), checked to be a
    manifest's size: at most L{MAX_DEPTH} levels, L{MAX_VALUES} values (so an
    alias bomb or a self-referencing alias is refused, not expanded), and
    integers of at most L{MAX_INTEGER_BITS} bits.

    @raise DocumentError: bad syntax, a value PyYAML cannot build (a date
        like 2020-13-45, an integer of thousands of digits), or too big.
    """
    try:
        document = yaml.load(data, Loader=_LOADER)  # a safe loader: safe tags only
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DocumentError(_yaml_problem(e), None if mark is None else mark.line + 1) from None
    except RecursionError:
        raise DocumentError(f"invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, OverflowError) as e:  # PyYAML's constructors: int(), datetime()
        raise DocumentError(f"invalid YAML: {e}") from None
    check_shape(document)
    return document


def check_shape(document: object) -> None:
    """
    @raise DocumentError: C{document} nests deeper than L{MAX_DEPTH}, holds
        more than L{MAX_VALUES} values (keys and shared ones counted each
        time) or an integer over L{MAX_INTEGER_BITS} bits.
    """
    values = 0
    stack: list[tuple[object, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            raise DocumentError(f"more than {MAX_VALUES} values: not a manifest")
        if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
            raise DocumentError(f"a number larger than {MAX_INTEGER_BITS} bits")
        if isinstance(value, dict | list | tuple | set):
            if depth >= MAX_DEPTH:
                raise DocumentError(f"nested more than {MAX_DEPTH} levels deep")
            if isinstance(value, dict):
                stack.extend((key, depth + 1) for key in value)
                stack.extend((item, depth + 1) for item in value.values())
            else:
                stack.extend((item, depth + 1) for item in value)


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or "invalid YAML"
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _pyproject_settings(data: bytes, app_label: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(data.decode("utf-8"))
        check_shape(document)
    except RecursionError:
        problem = f"nested more than {MAX_DEPTH} levels deep"
        raise ManifestError(app_label, None, f"{PYPROJECT}: invalid TOML: {problem}") from None
    except ValueError as e:  # TOMLDecodeError, UnicodeDecodeError, int(), DocumentError
        raise ManifestError(app_label, None, f"{PYPROJECT}: invalid TOML: {e}") from None
    tool = document.get("tool", {})
    settings = tool.get("buntime", {}) if isinstance(tool, dict) else {}
    if not isinstance(settings, dict):
        raise ManifestError(app_label, "tool.buntime", "must be a table")
    settings = dict(settings)
    project = document.get("project", {})
    if isinstance(project, dict):
        for key in ("name", "version"):
            if key in project and key not in settings:
                settings[key] = project[key]
    return settings


def _format_duration(seconds: float) -> str:
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


# -- the app manifest --------------------------------------------------------


def parse_app_manifest(
    document: Mapping[str, Any],
    *,
    body_size_default: int,
    body_size_max: int,
    app_label: str,
) -> tuple[AppManifest, list[str]]:
    """
    Validate an (already interpolated) settings map; see L{load_app_manifest}.
    """
    values: dict[str, Any] = {"max_body_size": body_size_default, "raw": dict(document)}
    for key, (attribute, parse) in FIELDS.items():
        value = document.get(key)
        if value is None:
            continue
        try:
            values[attribute] = parse(value)
        except ValueError as e:
            raise ManifestError(app_label, key, str(e)) from None
    manifest = AppManifest(**values)
    return _check_policy(manifest, body_size_max=body_size_max, app_label=app_label)


def _check_policy(
    manifest: AppManifest, *, body_size_max: int, app_label: str
) -> tuple[AppManifest, list[str]]:
    """The cross-field rules of SPEC §2: errors raise, fixable problems warn."""
    warnings = []
    if manifest.timeout <= 0:
        raise ManifestError(app_label, "timeout", "must be greater than 0")
    if manifest.max_body_size <= 0:
        raise ManifestError(
            app_label, "maxBodySize", "must be greater than 0 (BODY_SIZE_MAX caps it)"
        )
    ttl, timeout, idle = manifest.ttl, manifest.timeout, manifest.idle_timeout
    if ttl > 0:
        # defaults never make a long timeout invalid: what was not given grows to it
        if "ttl" not in manifest.raw and ttl < timeout:
            ttl = timeout
            manifest = evolve(manifest, ttl=ttl)
        if "idleTimeout" not in manifest.raw and idle < timeout:
            idle = timeout
            manifest = evolve(manifest, idle_timeout=idle)
        if ttl < timeout:
            raise ManifestError(
                app_label,
                "ttl",
                f"ttl ({_format_duration(ttl)}) must be at least timeout"
                f" ({_format_duration(timeout)}) when ttl > 0",
            )
        if idle < timeout:
            raise ManifestError(
                app_label,
                "idleTimeout",
                f"idleTimeout ({_format_duration(idle)}) must be at least timeout"
                f" ({_format_duration(timeout)}) when ttl > 0",
            )
        if idle > ttl:
            warnings.append(
                f"idleTimeout ({_format_duration(idle)}) is longer than ttl"
                f" ({_format_duration(ttl)}); lowered to {_format_duration(ttl)}"
            )
            manifest = evolve(manifest, idle_timeout=ttl)
    if manifest.max_body_size > body_size_max:
        warnings.append(
            f"maxBodySize ({format_size(manifest.max_body_size)}) exceeds BODY_SIZE_MAX"
            f" ({format_size(body_size_max)}); capped to {format_size(body_size_max)}"
        )
        manifest = evolve(manifest, max_body_size=body_size_max)
    return manifest, warnings


def load_app_manifest(
    app_dir: str,
    *,
    environ: Mapping[str, str],
    body_size_default: int,
    body_size_max: int,
    app_label: str,
    secret: Callable[[str], bool] | None = None,
) -> tuple[AppManifest, list[str]]:
    """
    Read, interpolate (from C{environ}) and validate the manifest of the app
    in C{app_dir}.  No manifest file means all defaults.  Returns the
    manifest and the warnings to log (never containing values of C{env}).
    With C{secret}, a variable of C{environ} it names is interpolated only
    when the manifest's C{envAllow} lists it (else as unset): a manifest
    cannot copy the runtime's secrets to its worker under another name.

    @param app_label: how errors name the app, e.g. C{"hello@1.0.0"}.
    @raise ManifestError: the manifest is invalid.
    """
    warnings: list[str] = []
    path = find_manifest(app_dir)
    if path is None:
        document: dict[str, Any] = {}
    else:
        document = read_document(path, app_label)
        if os.path.basename(path) == MANIFEST_FILES[0] and os.path.isfile(
            os.path.join(app_dir, MANIFEST_FILES[1])
        ):
            warnings.append(f"{MANIFEST_FILES[1]} ignored: {MANIFEST_FILES[0]} takes precedence")
    if secret is not None:
        environ = _without_secrets(environ, secret, document.get("envAllow"))
    manifest, more = parse_app_manifest(
        interpolate(document, environ),
        body_size_default=body_size_default,
        body_size_max=body_size_max,
        app_label=app_label,
    )
    return manifest, warnings + more


def _without_secrets(
    environ: Mapping[str, str], secret: Callable[[str], bool], allow: object
) -> dict[str, str]:
    """C{environ} without the names C{secret} picks, but for those C{allow} (C{envAllow}) lists."""
    listed = [allow] if isinstance(allow, str) else allow if isinstance(allow, list) else []
    allowed = {name.upper() for name in listed if isinstance(name, str)}
    return {k: v for k, v in environ.items() if k.upper() in allowed or not secret(k)}
