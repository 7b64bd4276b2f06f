"""
Configuration (SPEC §1): every option from the command line, the
environment, a C{.env} file or its default, in that order, and one-line
errors naming the variable and the value.
"""

from __future__ import annotations

import os

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from buntime.config import ConfigError, Peers, RuntimeConfig, load_config, read_dotenv

BASE = {"RUNTIME_WORKER_DIRS": "/srv/apps"}


def config(options=None, env=None, dotenv=None) -> RuntimeConfig:
    """A config from C{options}, C{BASE} plus C{env}, and C{dotenv}."""
    return load_config(options or {}, {**BASE, **(env or {})}, dotenv or {})


def error_of(options=None, env=None, dotenv=None) -> str:
    with pytest.raises(ConfigError) as caught:
        config(options, env, dotenv)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- defaults --------------------------------------------------------------------


def test_defaults(clean_environ):
    result = load_config({}, {"RUNTIME_WORKER_DIRS": "apps"})
    assert result.listen == "tcp:8000"
    assert result.port == 8000
    assert result.env == "development"
    assert result.worker_dirs == (os.path.abspath("apps"),)
    assert result.plugin_dirs == (os.path.abspath("plugins"),)
    assert result.pool_size == 10
    assert result.log_level == "debug"
    assert result.log_format == "pretty"
    assert result.log_file is None
    assert result.body_size_default == 10 * 1024**2
    assert result.body_size_max == 100 * 1024**2
    assert result.api_prefix == ""
    assert result.api_base == "/api"
    assert result.ephemeral_concurrency == 8 * (os.cpu_count() or 1)
    assert result.delay == pytest.approx(0.1)
    assert result.data_dir == os.path.abspath(".buntime")
    assert result.homepage is None
    assert result.worker_mode == "fork"
    assert result.production is False


@pytest.mark.parametrize(
    ("env", "pool_size", "log_level", "log_format"),
    [
        ("development", 10, "debug", "pretty"),
        ("staging", 50, "info", "json"),
        ("production", 500, "info", "json"),
        ("test", 5, "info", "json"),
    ],
)
def test_defaults_depend_on_the_environment(env, pool_size, log_level, log_format):
    result = config(env={"RUNTIME_ENV": env})
    assert (result.env, result.pool_size, result.log_level, result.log_format) == (
        env,
        pool_size,
        log_level,
        log_format,
    )
    assert result.production is (env == "production")


def test_explicit_values_beat_environment_dependent_defaults():
    result = config(
        env={
            "RUNTIME_ENV": "production",
            "RUNTIME_POOL_SIZE": "3",
            "RUNTIME_LOG_LEVEL": "debug",
            "RUNTIME_LOG_FORMAT": "pretty",
        }
    )
    assert (result.pool_size, result.log_level, result.log_format) == (3, "debug", "pretty")


def test_node_env_is_the_fallback_for_runtime_env():
    assert config(env={"NODE_ENV": "production"}).env == "production"
    assert config(env={"NODE_ENV": "production", "RUNTIME_ENV": "staging"}).env == "staging"
    assert config(env={"NODE_ENV": "production", "RUNTIME_ENV": ""}).env == "production"
    assert config(options={"env": "test"}, env={"NODE_ENV": "production"}).env == "test"


def test_bad_node_env_is_named():
    assert error_of(env={"NODE_ENV": "prod"}) == (
        "NODE_ENV must be one of development, staging, production, test, got 'prod'"
    )


# -- each variable ------------------------------------------------------------------

# (option, environment variable, value, attribute, parsed)
EACH = [
    ("port", "PORT", "9000", "port", 9000),
    ("port", "PORT", "9000", "listen", "tcp:9000"),
    (
        "listen",
        "RUNTIME_LISTEN",
        "tcp:0:interface=127.0.0.1",
        "listen",
        "tcp:0:interface=127.0.0.1",
    ),
    ("env", "RUNTIME_ENV", "Staging", "env", "staging"),
    ("worker_dirs", "RUNTIME_WORKER_DIRS", "/a:/b/../c:", "worker_dirs", ("/a", "/c")),
    ("plugin_dirs", "RUNTIME_PLUGIN_DIRS", "/p:/q", "plugin_dirs", ("/p", "/q")),
    ("pool_size", "RUNTIME_POOL_SIZE", "7", "pool_size", 7),
    ("log_level", "RUNTIME_LOG_LEVEL", "WARNING", "log_level", "warn"),
    ("log_level", "RUNTIME_LOG_LEVEL", "error", "log_level", "error"),
    ("log_format", "RUNTIME_LOG_FORMAT", "json", "log_format", "json"),
    ("log_file", "RUNTIME_LOG_FILE", "/tmp/b.log", "log_file", "/tmp/b.log"),
    ("body_size_default", "BODY_SIZE_DEFAULT", "1kb", "body_size_default", 1024),
    ("body_size_max", "BODY_SIZE_MAX", "1gb", "body_size_max", 1024**3),
    ("api_prefix", "RUNTIME_API_PREFIX", "/_/", "api_prefix", "/_"),
    ("api_prefix", "RUNTIME_API_PREFIX", "/_", "api_base", "/_/api"),
    ("ephemeral_concurrency", "RUNTIME_EPHEMERAL_CONCURRENCY", "3", "ephemeral_concurrency", 3),
    ("delay_ms", "DELAY_MS", "250", "delay", 0.25),
    ("data_dir", "RUNTIME_DATA_DIR", "/var/lib/buntime", "data_dir", "/var/lib/buntime"),
    ("homepage", "RUNTIME_HOMEPAGE", "site", "homepage", "site"),
    ("worker_mode", "RUNTIME_WORKER_MODE", "spawn", "worker_mode", "spawn"),
    ("header_timeout", "RUNTIME_HEADER_TIMEOUT", "2500ms", "header_timeout", 2.5),
    ("header_timeout", "RUNTIME_HEADER_TIMEOUT", "7", "header_timeout", 7.0),
    ("max_connections", "RUNTIME_MAX_CONNECTIONS", "64", "max_connections", 64),
    (
        "forwarded_allow_ips",
        "RUNTIME_FORWARDED_ALLOW_IPS",
        "10.0.0.1, ::0001",
        "forwarded_allow_ips",
        Peers(frozenset({"10.0.0.1", "::1"})),
    ),
    ("drain_delay", "RUNTIME_DRAIN_DELAY", "2s", "drain_delay", 2.0),
    (
        "api_token",
        "RUNTIME_API_TOKEN",
        "s3cret-token-0123456789",
        "api_token",
        "s3cret-token-0123456789",
    ),
    ("drain_delay", "RUNTIME_DRAIN_DELAY", "0", "drain_delay", 0.0),
    ("shutdown_timeout", "RUNTIME_SHUTDOWN_TIMEOUT", "1m", "shutdown_timeout", 60.0),
    ("forwarded_allow_ips", "RUNTIME_FORWARDED_ALLOW_IPS", "*", "forwarded_allow_ips", None),
    ("reload", "RUNTIME_RELOAD", "1", "reload", True),
    ("reload", "RUNTIME_RELOAD", "off", "reload", False),
    ("worker_cpus", "RUNTIME_WORKER_CPUS", "Others", "worker_cpus", "others"),
    ("worker_cpus", "RUNTIME_WORKER_CPUS", "1-3,5", "worker_cpus", "1-3,5"),
]


@pytest.mark.parametrize(("option", "name", "value", "attribute", "parsed"), EACH)
def test_each_variable_from_the_environment(option, name, value, attribute, parsed):
    assert getattr(config(env={name: value}), attribute) == parsed


@pytest.mark.parametrize(("option", "name", "value", "attribute", "parsed"), EACH)
def test_each_variable_from_dotenv(option, name, value, attribute, parsed):
    environ = {} if name == "RUNTIME_WORKER_DIRS" else BASE
    result = load_config({}, environ, {**BASE, name: value})
    assert getattr(result, attribute) == parsed


@pytest.mark.parametrize(("option", "name", "value", "attribute", "parsed"), EACH)
def test_each_variable_from_the_command_line(option, name, value, attribute, parsed):
    assert getattr(config(options={option: value}), attribute) == parsed


def test_every_option_has_an_environment_variable():
    names = {name for _, name, *_ in EACH}
    from buntime.config import ENV_NAMES

    assert {names[0] for names in ENV_NAMES.values()} == names


def test_listen_wins_over_port():
    result = config(options={"listen": "unix:/tmp/b.sock"}, env={"PORT": "9000"})
    assert (result.listen, result.port) == ("unix:/tmp/b.sock", None)


def test_port_on_the_command_line_beats_listen_from_the_environment():
    result = config(options={"port": "9001"}, env={"RUNTIME_LISTEN": "tcp:8080"})
    assert (result.listen, result.port) == ("tcp:9001", 9001)


def test_empty_values_count_as_unset():
    result = config(env={"PORT": "", "RUNTIME_POOL_SIZE": "", "RUNTIME_LOG_FILE": ""})
    assert (result.port, result.pool_size, result.log_file) == (8000, 10, None)


# -- precedence ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "env", "dotenv", "port"),
    [
        ({"port": "1"}, {"PORT": "2"}, {"PORT": "3"}, 1),
        ({}, {"PORT": "2"}, {"PORT": "3"}, 2),
        ({}, {}, {"PORT": "3"}, 3),
        ({}, {}, {}, 8000),
        ({"port": "1"}, {}, {"PORT": "3"}, 1),
    ],
)
def test_precedence_cli_env_dotenv_default(options, env, dotenv, port):
    assert config(options, env, dotenv).port == port


@given(
    cli=st.none() | st.integers(1, 65535),
    env=st.none() | st.integers(1, 65535),
    dotenv=st.none() | st.integers(1, 65535),
)
def test_precedence_property(cli, env, dotenv):
    options = {} if cli is None else {"port": str(cli)}
    environ = {} if env is None else {"PORT": str(env)}
    dot = {} if dotenv is None else {"PORT": str(dotenv)}
    expected = next(v for v in (cli, env, dotenv, 8000) if v is not None)
    assert config(options, environ, dot).port == expected


def test_dotenv_does_not_override_the_environment_but_is_kept_in_environ():
    result = load_config({}, {**BASE, "A": "real"}, {"A": "dot", "B": "dot"})
    assert result.environ["A"] == "real"
    assert result.environ["B"] == "dot"


def test_cli_none_means_not_given():
    assert config(options={"port": None, "env": None}, env={"PORT": "5"}).port == 5


# -- errors ---------------------------------------------------------------------------


def test_missing_worker_dirs():
    with pytest.raises(ConfigError) as caught:
        load_config({}, {})
    assert (
        str(caught.value)
        == "workerDirs is required: set RUNTIME_WORKER_DIRS env var (or pass -w/--worker-dirs)"
    )


@pytest.mark.parametrize("value", ["", ":", " : "])
def test_empty_worker_dirs(value):
    with pytest.raises(ConfigError, match="workerDirs is required"):
        load_config({}, {"RUNTIME_WORKER_DIRS": value})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "abc"}, "PORT must be an integer, got 'abc'"),
        ({"PORT": "-1"}, "PORT must be at least 0, got '-1'"),
        ({"PORT": "70000"}, "PORT must be at most 65535, got 70000"),
        ({"PORT": "80.5"}, "PORT must be an integer, got '80.5'"),
        (
            {"RUNTIME_ENV": "prod"},
            "RUNTIME_ENV must be one of development, staging, production, test, got 'prod'",
        ),
        ({"RUNTIME_POOL_SIZE": "0"}, "RUNTIME_POOL_SIZE must be at least 1, got '0'"),
        ({"RUNTIME_POOL_SIZE": "many"}, "RUNTIME_POOL_SIZE must be an integer, got 'many'"),
        (
            {"RUNTIME_LOG_LEVEL": "loud"},
            "RUNTIME_LOG_LEVEL must be one of debug, info, warn, error, got 'loud'",
        ),
        (
            {"RUNTIME_LOG_FORMAT": "xml"},
            "RUNTIME_LOG_FORMAT must be one of pretty, json, got 'xml'",
        ),
        ({"BODY_SIZE_DEFAULT": "big"}, "BODY_SIZE_DEFAULT must be a size like 10mb, got 'big'"),
        ({"BODY_SIZE_MAX": "-1mb"}, "BODY_SIZE_MAX must be a size like 10mb, got '-1mb'"),
        (
            {"BODY_SIZE_DEFAULT": "2mb", "BODY_SIZE_MAX": "1mb"},
            "BODY_SIZE_DEFAULT (2097152 bytes) must not exceed BODY_SIZE_MAX (1048576 bytes)",
        ),
        ({"RUNTIME_API_PREFIX": "api"}, "RUNTIME_API_PREFIX must be a path like /_, got 'api'"),
        (
            {"RUNTIME_API_PREFIX": "/a b"},
            "RUNTIME_API_PREFIX must be a path like /_, got '/a b'",
        ),
        (
            {"RUNTIME_EPHEMERAL_CONCURRENCY": "0"},
            "RUNTIME_EPHEMERAL_CONCURRENCY must be at least 1, got '0'",
        ),
        (
            {"DELAY_MS": "soon"},
            "DELAY_MS must be a non-negative number of milliseconds (like 100), got 'soon'",
        ),
        (
            {"DELAY_MS": "-5"},
            "DELAY_MS must be a non-negative number of milliseconds (like 100), got '-5'",
        ),
        (
            {"DELAY_MS": "nan"},
            "DELAY_MS must be a non-negative number of milliseconds (like 100), got 'nan'",
        ),
        (
            {"RUNTIME_WORKER_MODE": "thread"},
            "RUNTIME_WORKER_MODE must be one of fork, spawn, got 'thread'",
        ),
    ],
)
def test_bad_values_name_the_variable_and_the_value(env, message):
    assert error_of(env=env) == message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": "abc"}, "--port must be an integer, got 'abc'"),
        ({"pool_size": "x"}, "--pool-size must be an integer, got 'x'"),
        ({"log_level": "x"}, "--log-level must be one of debug, info, warn, error, got 'x'"),
        ({"env": "x"}, "--env must be one of development, staging, production, test, got 'x'"),
    ],
)
def test_bad_command_line_values_name_the_flag(options, message):
    assert error_of(options=options) == message


def test_bad_dotenv_value_is_named_like_the_environment():
    assert error_of(dotenv={"PORT": "x"}) == "PORT must be an integer, got 'x'"


# -- the value ------------------------------------------------------------------------


def test_config_is_frozen():
    result = config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.port = 1  # type: ignore[misc]
    assert attrs.has(RuntimeConfig)


def test_read_dotenv(tmp_path):
    path = tmp_path / ".env"
    path.write_text('# comment\nPORT=9000\nexport RUNTIME_ENV="production"\nEMPTY=\nBARE\n')
    assert read_dotenv(str(path)) == {"PORT": "9000", "RUNTIME_ENV": "production", "EMPTY": ""}


def test_read_dotenv_without_a_file(tmp_path):
    assert read_dotenv(str(tmp_path / "missing.env")) == {}


def test_log_file_must_be_writable(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "buntime.log"
    assert error_of(env={"RUNTIME_LOG_FILE": str(missing)}) == (
        f"RUNTIME_LOG_FILE cannot be written: {str(missing)!r} (No such file or directory)"
    )
    fine = tmp_path / "buntime.log"
    assert config(env={"RUNTIME_LOG_FILE": str(fine)}).log_file == str(fine)


def test_the_environment_is_not_in_the_repr():
    """The config is handed to plugins; printing it must not print secrets."""
    shown = repr(config(env={"API_TOKEN": "s3cret-value"}))
    assert "s3cret-value" not in shown


@pytest.mark.parametrize("value", ["0", "-1s", "soon", "10parsecs"])
def test_a_bad_header_timeout_names_the_variable(value):
    message = error_of(env={"RUNTIME_HEADER_TIMEOUT": value})
    assert "RUNTIME_HEADER_TIMEOUT" in message and repr(value) in message


@pytest.mark.parametrize("value", ["0", "many", "-5"])
def test_a_bad_connection_limit_names_the_variable(value):
    assert "RUNTIME_MAX_CONNECTIONS" in error_of(env={"RUNTIME_MAX_CONNECTIONS": value})


def test_head_deadline_and_connection_cap_defaults():
    result = config()
    assert (result.header_timeout, result.max_connections) == (10.0, 4096)


def test_forwarded_headers_are_trusted_from_loopback_by_default():
    assert config().forwarded_allow_ips == Peers(frozenset({"127.0.0.1", "::1"}))


def test_trusted_peers_may_be_networks():
    peers = config(env={"RUNTIME_FORWARDED_ALLOW_IPS": "10.0.0.0/8, fd00::/8, 192.168.1.7"})
    allowed = peers.forwarded_allow_ips
    assert "10.42.3.9" in allowed and "192.168.1.7" in allowed and "fd00::5" in allowed
    assert "11.0.0.1" not in allowed and "192.168.1.8" not in allowed and "nonsense" not in allowed


def test_the_api_token_is_long_enough_and_never_shown():
    assert config().api_token is None
    assert "RUNTIME_API_TOKEN" in error_of(env={"RUNTIME_API_TOKEN": "short"})
    made = config(env={"RUNTIME_API_TOKEN": "a-long-enough-secret-token"})
    assert "a-long-enough-secret-token" not in repr(made)


@pytest.mark.parametrize("token", ["geheim-schlüssel-0123456789", "control\x01character-0123"])
def test_an_api_token_no_client_can_send_stops_the_start(token):
    # header values arrive as latin-1 text: a UTF-8 client's "ü" never matched,
    # every change was a 401 (browsers refuse such a header, the parser a control character)
    message = error_of(env={"RUNTIME_API_TOKEN": token})
    assert "RUNTIME_API_TOKEN" in message and "ASCII" in message
    assert token not in message


def test_drain_and_shutdown_defaults_follow_the_environment():
    assert (config().drain_delay, config().shutdown_timeout) == (0.0, 30.0)
    production = config(env={"RUNTIME_ENV": "production"})
    assert production.drain_delay == 5.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUNTIME_DRAIN_DELAY", "-1s"),
        ("RUNTIME_DRAIN_DELAY", "soon"),
        ("RUNTIME_SHUTDOWN_TIMEOUT", "0"),
    ],
)
def test_a_bad_drain_or_shutdown_setting_names_the_variable(name, value):
    assert name in error_of(env={name: value})


@pytest.mark.parametrize("value", ["10.0.0.0/33", "proxy.local", "127.0.0.1,*"])
def test_a_bad_forwarded_allow_list_names_the_variable(value):
    message = error_of(env={"RUNTIME_FORWARDED_ALLOW_IPS": value})
    assert "RUNTIME_FORWARDED_ALLOW_IPS" in message
