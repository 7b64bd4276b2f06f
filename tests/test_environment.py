"""
The worker environment (nothing inherited but what Python needs, sensitive
names blocked) and entrypoint resolution.
"""

from __future__ import annotations

import json
import os

import pytest

import buntime
from buntime.manifest import AppManifest
from buntime.pool.environment import (
    EntrypointError,
    build_worker_env,
    is_sensitive,
    resolve_entrypoint,
)

RUNTIME = {
    "RUNTIME_API_URL": "http://127.0.0.1:8000",
    "RUNTIME_ENV": "test",
    "RUNTIME_LOG_LEVEL": "info",
    "RUNTIME_WORKER_DIRS": "/apps",
    "RUNTIME_PLUGIN_DIRS": "/plugins",
}

RUNTIME_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/rt",
    "LANG": "en_US.UTF-8",
    "TZ": "UTC",
    "DATABASE_URL": "postgres://secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "SOME_OTHER": "nope",
    "PYTHONPATH": "/somewhere/else",
    "VIRTUAL_ENV": "/venv",
}


def build(manifest=None, runtime_env=RUNTIME_ENV, deps_dir=None):
    return build_worker_env(
        app_dir="/apps/hello@1.0.0",
        entrypoint="/apps/hello@1.0.0/app.py",
        worker_id="0f4c-worker",
        manifest=manifest or AppManifest(),
        runtime_env=runtime_env,
        runtime=RUNTIME,
        deps_dir=deps_dir,
    )


@pytest.mark.parametrize(
    "name",
    [
        "DATABASE_URL",
        "db_host",
        "DB_PASSWORD",
        "API_KEY",
        "APIKEY",
        "api_key_v2",
        "AUTH_KEY",
        "SECRET_KEY",
        "SECRETKEY",
        "PRIVATE_KEY",
        "privatekey",
        "GITHUB_TOKEN",
        "MY_TOKEN",
        "slack_token",
        "APP_SECRET",
        "ADMIN_PASSWORD",
        "AWS_REGION",
        "GITHUB_USER",
        "OPENAI_API_KEY",
        "ANTHROPIC_BASE",
        "STRIPE_PUBLIC",
    ],
)
def test_sensitive_names(name):
    assert is_sensitive(name)


@pytest.mark.parametrize(
    "name",
    ["GREETING", "DEBUG", "MY_DB_NAME", "TOKEN_COUNT", "PASSWORD_HINT_URL", "SECRETARY", "KEYS"],
)
def test_harmless_names(name):
    assert not is_sensitive(name)


def test_nothing_is_inherited_but_what_python_needs():
    env, blocked = build()
    assert blocked == []
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["HOME"] == "/home/rt"
    assert env["LANG"] == "en_US.UTF-8"
    assert env["TZ"] == "UTC"
    for name in ("DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "SOME_OTHER", "VIRTUAL_ENV"):
        assert name not in env
    assert "postgres://secret" not in json.dumps(env)
    assert set(env) == {
        "PATH",
        "HOME",
        "LANG",
        "TZ",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "APP_DIR",
        "ENTRYPOINT",
        "WORKER_ID",
        "WORKER_CONFIG",
        *RUNTIME,
    }


def test_buntime_values():
    env, _ = build(AppManifest(raw={"timeout": "5s", "custom": [1, 2]}))
    assert env["APP_DIR"] == "/apps/hello@1.0.0"
    assert env["ENTRYPOINT"] == "/apps/hello@1.0.0/app.py"
    assert env["WORKER_ID"] == "0f4c-worker"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert json.loads(env["WORKER_CONFIG"]) == {"timeout": "5s", "custom": [1, 2]}
    for name, value in RUNTIME.items():
        assert env[name] == value


def test_python_path_has_app_deps_and_buntime():
    buntime_root = os.path.dirname(os.path.dirname(os.path.abspath(buntime.__file__)))
    env, _ = build(deps_dir="/apps/hello@1.0.0/.deps")
    assert env["PYTHONPATH"].split(os.pathsep) == [
        "/apps/hello@1.0.0",
        "/apps/hello@1.0.0/.deps",
        buntime_root,
    ]
    env, _ = build()
    assert env["PYTHONPATH"].split(os.pathsep) == ["/apps/hello@1.0.0", buntime_root]


def test_minimal_runtime_environment():
    env, _ = build(runtime_env={})
    assert env["PATH"] == os.defpath
    assert env["LANG"] == "C.UTF-8"
    assert "HOME" not in env and "TZ" not in env and "TMPDIR" not in env


def test_manifest_env_minus_sensitive_names():
    manifest = AppManifest(
        env={
            "GREETING": "hi",
            "DATABASE_URL": "postgres://app-secret",
            "MY_TOKEN": "t0k3n",
            "PATH": "/opt/bin",
        },
        raw={"env": {"GREETING": "hi", "DATABASE_URL": "postgres://app-secret", "MY_TOKEN": "t"}},
    )
    env, blocked = build(manifest)
    assert env["GREETING"] == "hi"
    assert env["PATH"] == "/opt/bin"
    assert blocked == ["DATABASE_URL", "MY_TOKEN"]
    assert "DATABASE_URL" not in env and "MY_TOKEN" not in env
    # the blocked values do not sneak in through WORKER_CONFIG either
    assert json.loads(env["WORKER_CONFIG"]) == {"env": {"GREETING": "hi"}}
    assert "app-secret" not in json.dumps(env)


def test_manifest_env_cannot_override_buntime_names():
    manifest = AppManifest(
        env={"APP_DIR": "/etc", "PYTHONPATH": "/evil", "RUNTIME_ENV": "production", "OK": "1"}
    )
    env, blocked = build(manifest)
    assert blocked == ["APP_DIR", "PYTHONPATH", "RUNTIME_ENV"]
    assert env["APP_DIR"] == "/apps/hello@1.0.0"
    assert "/evil" not in env["PYTHONPATH"]
    assert env["RUNTIME_ENV"] == "test"
    assert env["OK"] == "1"


def test_worker_config_handles_yaml_types():
    import datetime

    env, _ = build(AppManifest(raw={"released": datetime.date(2024, 1, 2)}))
    assert json.loads(env["WORKER_CONFIG"]) == {"released": "2024-01-02"}


# -- entrypoints ---------------------------------------------------------------


@pytest.fixture
def app_dir(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (tmp_path / "outside.py").write_text("SECRET = 1\n")
    return app


@pytest.mark.parametrize(
    "files,expected",
    [
        (["index.html", "app.py", "main.py", "index.py"], "index.html"),
        (["app.py", "main.py", "index.py"], "app.py"),
        (["main.py", "index.py"], "main.py"),
        (["index.py"], "index.py"),
    ],
)
def test_auto_detection_order(app_dir, files, expected):
    for name in files:
        (app_dir / name).write_text("")
    assert resolve_entrypoint(str(app_dir), None) == (str(app_dir / expected), None)


def test_no_entrypoint(app_dir):
    (app_dir / "readme.txt").write_text("")
    with pytest.raises(EntrypointError, match="No entrypoint found"):
        resolve_entrypoint(str(app_dir), None)


def test_declared_entrypoint_with_attribute(app_dir):
    (app_dir / "src").mkdir()
    (app_dir / "src" / "server.py").write_text("")
    assert resolve_entrypoint(str(app_dir), "src/server.py:create_app") == (
        str(app_dir / "src" / "server.py"),
        "create_app",
    )
    assert resolve_entrypoint(str(app_dir), "./src/server.py") == (
        str(app_dir / "src" / "server.py"),
        None,
    )
    assert resolve_entrypoint(str(app_dir), "src/server.py:api.app")[1] == "api.app"


@pytest.mark.parametrize(
    "declared,message",
    [
        ("/etc/passwd.py", "relative to the app directory"),
        ("../outside.py", "must not leave the app directory"),
        ("src/../../outside.py", "must not leave the app directory"),
        ("..\\outside.py", "must not leave the app directory"),
        ("\\outside.py", "relative to the app directory"),
        ("missing.py", "not found"),
        ("app.py:1bad", "is not an attribute"),
        ("app.py:", "is not an attribute"),
        (":app", "no file named"),
        ("notes.txt", "must be a .py or .html file"),
        ("index.html:app", "has no attributes"),
        ("src", "must be a .py or .html file"),
    ],
)
def test_invalid_entrypoints(app_dir, declared, message):
    (app_dir / "app.py").write_text("")
    (app_dir / "index.html").write_text("")
    (app_dir / "notes.txt").write_text("")
    (app_dir / "src").mkdir()
    with pytest.raises(EntrypointError, match=message):
        resolve_entrypoint(str(app_dir), declared)


def test_symlink_escape_is_refused(app_dir, tmp_path):
    os.symlink(tmp_path / "outside.py", app_dir / "link.py")
    with pytest.raises(EntrypointError, match="outside the app directory"):
        resolve_entrypoint(str(app_dir), "link.py")
    os.symlink(tmp_path, app_dir / "up")
    with pytest.raises(EntrypointError, match="outside the app directory"):
        resolve_entrypoint(str(app_dir), "up/outside.py")


def test_symlink_inside_is_fine(app_dir):
    (app_dir / "real.py").write_text("")
    os.symlink(app_dir / "real.py", app_dir / "app.py")
    assert resolve_entrypoint(str(app_dir), None) == (str(app_dir / "app.py"), None)


def test_symlinked_app_dir_is_fine(app_dir, tmp_path):
    (app_dir / "app.py").write_text("")
    os.symlink(app_dir, tmp_path / "alias")
    path, _ = resolve_entrypoint(str(tmp_path / "alias"), None)
    assert path == str(tmp_path / "alias" / "app.py")
