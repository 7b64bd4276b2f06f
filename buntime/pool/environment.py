"""
What a worker process starts with: its environment (the entrypoint it is
given is found by L{buntime.apps.resolve}), and each app version as the
pool runs it (L{PoolApps}).

Workers do not inherit the runtime's environment (it may hold secrets); they
get what Python needs, buntime's own variables, and the app manifest's
C{env} minus sensitive names.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping

from attrs import define, field

import buntime
from buntime.logs import log
from buntime.manifest import AppManifest
from buntime.pool.deps import DEPS_DIR
from buntime.pool.state import PoolApp
from buntime.sensitive import is_sensitive

__all__ = ["PoolApps", "build_worker_env", "is_sensitive", "worker_config"]

INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The only variables copied from the runtime's environment (when set)."""

RUNTIME_NAMES = (
    "RUNTIME_API_URL",
    "RUNTIME_ENV",
    "RUNTIME_LOG_LEVEL",
    "RUNTIME_WORKER_DIRS",
    "RUNTIME_PLUGIN_DIRS",
)
"""The runtime's settings every worker sees."""

RESERVED = frozenset(
    (
        "APP_DIR",
        "ENTRYPOINT",
        "WORKER_ID",
        "WORKER_CONFIG",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        *RUNTIME_NAMES,
    )
)
"""Names buntime sets itself; a manifest's C{env} cannot override them."""


def _package_root() -> str:
    """The directory holding the C{buntime} package, so a worker can import it."""
    return os.path.dirname(os.path.dirname(os.path.abspath(buntime.__file__)))


def worker_config(manifest: AppManifest) -> str:
    """
    C{WORKER_CONFIG}: the manifest document as JSON, with sensitive names
    removed from its C{env} map as well.
    """
    config = dict(manifest.raw)
    env = config.get("env")
    if isinstance(env, Mapping):
        allowed = manifest.env_allow
        config["env"] = {
            key: value for key, value in env.items() if not is_sensitive(str(key), allowed)
        }
    return json.dumps(_with_text_keys(config), default=str, sort_keys=True)


def _with_text_keys(value: object) -> object:
    """
    C{value} with every map's keys as JSON names them (YAML also allows
    numbers, booleans, null and dates as keys, which would not sort together),
    sets as lists.
    """
    if isinstance(value, Mapping):
        return {
            key if isinstance(key, str) else _key_text(key): _with_text_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_with_text_keys(item) for item in value]
    return value


def _key_text(key: object) -> str:
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    return str(key)


def build_worker_env(
    *,
    app_dir: str,
    entrypoint: str,
    worker_id: str,
    manifest: AppManifest,
    runtime_env: Mapping[str, str],
    runtime: Mapping[str, str],
    deps_dir: str | None,
) -> tuple[dict[str, str], list[str]]:
    """
    The complete environment of a worker, and the names dropped from the
    manifest's C{env} (sensitive, or reserved by buntime), sorted.  The
    caller logs the dropped names once per app (names only, never values).

    @param runtime_env: the runtime's own environment (C{os.environ}); only
        L{INHERITED} names are read from it.
    @param runtime: values for L{RUNTIME_NAMES}.
    @param deps_dir: the app's installed dependencies (autoInstall), if any.
    """
    env: dict[str, str] = {}
    for name in INHERITED:
        if name in runtime_env:
            env[name] = runtime_env[name]
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")

    blocked = []
    for name, value in manifest.env.items():
        if is_sensitive(name, manifest.env_allow) or name.upper() in RESERVED:
            blocked.append(name)
        else:
            env[name] = value

    python_path = [app_dir]
    if deps_dir:
        python_path.append(deps_dir)
    root = _package_root()
    if root not in python_path:
        python_path.append(root)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONUNBUFFERED": "1",
            "APP_DIR": app_dir,
            "ENTRYPOINT": entrypoint,
            "WORKER_ID": worker_id,
            "WORKER_CONFIG": worker_config(manifest),
        }
    )
    for name in RUNTIME_NAMES:
        if name in runtime:
            env[name] = str(runtime[name])
    return env, sorted(blocked)


@define
class PoolApps:
    """
    Builds the pool's view of an app version (L{PoolApp}): its worker
    environment from the runtime's own (C{environ}, C{runtime_env} for the
    C{RUNTIME_*} values) and its manifest.  Names blocked from a manifest's
    C{env} are logged once per app.
    """

    environ: Mapping[str, str]
    runtime_env: Callable[[], Mapping[str, str]]
    _warned: set[str] = field(factory=set)

    def build(
        self, *, dir: str, name: str, version: str, manifest: AppManifest, entrypoint: str
    ) -> PoolApp:
        """The app at C{dir}; C{entrypoint} is resolved (C{file[:attr]})."""
        label = f"{name}@{version}"
        env, blocked = build_worker_env(
            app_dir=dir,
            entrypoint=entrypoint,
            worker_id=str(uuid.uuid4()),
            manifest=manifest,
            runtime_env=self.environ,
            runtime=self.runtime_env(),
            deps_dir=_deps_dir(dir, manifest),
        )
        if blocked and label not in self._warned:
            self._warned.add(label)
            log(
                "warn",
                "buntime:apps:env-blocked",
                f"Blocked sensitive variables from the environment of {label}: "
                + ", ".join(sorted(blocked)),
                app=label,
                blocked=sorted(blocked),
            )
        return PoolApp(key=dir, name=name, version=version, dir=dir, manifest=manifest, env=env)


def _deps_dir(app_dir: str, manifest: AppManifest) -> str | None:
    """C{<app>/.deps}, where autoInstall puts the app's requirements."""
    deps = os.path.join(app_dir, DEPS_DIR)
    return deps if manifest.auto_install or os.path.isdir(deps) else None
