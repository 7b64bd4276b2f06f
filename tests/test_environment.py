"""
The worker environment (nothing inherited but what Python needs, sensitive
names blocked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import buntime
from buntime.manifest import AppManifest
from buntime.pool.environment import _package_root, build_worker_env, is_sensitive

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
        # a secret's words anywhere in the name (issue 18)
        "MY_API_KEY",
        "PAYMENTS_SECRET",
        "DB_PASS",
        "SMTP_PASS",
        "MAILER_PASSWORD_FILE",
        "SERVICE_CREDENTIALS",
        "GCP_CREDENTIAL_JSON",
        "SIGNING_KEY",
        "TOKEN_COUNT",  # a false alarm: envAllow passes it on
        "ACCESS_KEY_ID",
        "LDAP_PASSWD",
    ],
)
def test_sensitive_names(name):
    assert is_sensitive(name)


@pytest.mark.parametrize(
    "name",
    ["GREETING", "DEBUG", "MY_DB_NAME", "SECRETARY", "KEYS", "PASSPORT_URL", "MONKEY", "TOKENIZER"],
)
def test_harmless_names(name):
    assert not is_sensitive(name)


def test_the_manifest_may_allow_names_it_means_to_pass():
    assert not is_sensitive("TOKEN_COUNT", frozenset({"TOKEN_COUNT"}))
    assert is_sensitive("MY_API_KEY", frozenset({"TOKEN_COUNT"}))


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


def test_envallow_in_a_manifest_passes_a_sensitive_looking_name_on(tmp_path):
    from buntime.manifest import load_app_manifest

    (tmp_path / "manifest.yaml").write_text(
        "env:\n  TOKEN_COUNT: '3'\n  STRIPE_SECRET: sk\n  WORKER_ID: x\n"
        "envAllow: [token_count, WORKER_ID]\n"
    )
    manifest, _ = load_app_manifest(
        str(tmp_path), environ={}, body_size_default=1024, body_size_max=2048, app_label="a@1"
    )
    assert manifest.env_allow == frozenset({"TOKEN_COUNT", "WORKER_ID"})
    env, blocked = build(manifest)
    assert env["TOKEN_COUNT"] == "3"
    assert blocked == ["STRIPE_SECRET", "WORKER_ID"]  # a reserved name is never allowed
    assert "STRIPE_SECRET" not in env["WORKER_CONFIG"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/environ")
def test_secret_values_are_wiped_from_the_processs_first_environment():
    """/proc/<pid>/environ (readable by the user's other processes) loses them; the process not."""
    script = """
import ctypes, os
from buntime._libc import hide_environment_values, libc
from buntime.pool.environment import is_sensitive
print(hide_environment_values(is_sensitive))
shown = open("/proc/self/environ", "rb").read()
print(b"s3cret-value" in shown, b"PLAIN=kept" in shown, b"MY_TOKEN=" in shown)
getenv = libc().getenv
getenv.restype = ctypes.c_char_p
print(getenv(b"MY_TOKEN").decode(), os.environ["MY_TOKEN"])
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"MY_TOKEN": "s3cret-value", "PLAIN": "kept", "PYTHONPATH": _package_root()},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines() == [
        "['MY_TOKEN']",
        "False True True",
        "s3cret-value s3cret-value",
    ]


def test_a_manifest_cannot_copy_a_runtime_secret_into_a_name_that_looks_harmless(tmp_path):
    """
    C{${RUNTIME_API_TOKEN}} in an uploaded manifest's C{env} (under a
    harmless name) or in any other field (C{WORKER_CONFIG}) does not hand
    the runtime's secret to the worker; a name C{envAllow} lists still does.
    """
    from twisted.internet.task import Clock

    from buntime.apps.discovery import AppCatalog
    from buntime.web.apps import AppStep

    app = tmp_path / "hello@1.0.0"
    app.mkdir()
    (app / "app.py").write_text("def app(environ, start_response): pass\n")
    (app / "manifest.yaml").write_text(
        "entrypoint: app.py\n"
        "description: 'see ${AWS_SECRET_ACCESS_KEY}'\n"
        "env:\n"
        "  NOTE: ${RUNTIME_API_TOKEN}\n"
        "  SHOP_DB_PASS: ${SHOP_DB_PASS}\n"
        "  HOME_DIR: ${HOME}\n"
        "envAllow: [SHOP_DB_PASS]\n"
    )
    environ = {
        **RUNTIME_ENV,
        "RUNTIME_API_TOKEN": "tok-0123456789-secret",
        "SHOP_DB_PASS": "meant-for-the-shop",
    }
    catalog = AppCatalog([str(tmp_path)], Clock())
    step = AppStep(catalog, None, environ, dict, 1024, 2048)  # type: ignore[arg-type]
    version = catalog.resolve("hello", None)
    assert version is not None
    env, _ = build(step.load(version).manifest, runtime_env=environ)
    shown = json.dumps(env)
    assert "tok-0123456789-secret" not in shown
    assert "aws-secret" not in shown
    assert env["SHOP_DB_PASS"] == "meant-for-the-shop"  # allowed by name: given deliberately
    assert env["HOME_DIR"] == "/home/rt"  # a variable that is no secret is interpolated
