"""What twistd calls: the C{buntime} Options and makeService, and the plugin that names them."""

from __future__ import annotations

import gc
import json
import os

import pytest
from twisted.application.service import Application, IService, IServiceMaker
from twisted.internet.task import Clock
from twisted.logger import ILogObserver
from twisted.plugin import getPlugins
from twisted.scripts.twistd import ServerOptions

from buntime.config import RuntimeConfig
from buntime.logs import log
from buntime.logs.service import LoggingService
from buntime.service import GC_THRESHOLD, settle_memory
from buntime.tap import Options, makeService, report_failed_start


def parse(argv: list[str]) -> Options:
    options = Options()
    options.parseOptions(argv)
    return options


def test_options_build_the_config(clean_environ, tmp_path):
    options = parse(
        [
            "--worker-dirs",
            f"{tmp_path}/a:{tmp_path}/b",
            "-p",
            "9000",
            "--env",
            "production",
            "--pool-size",
            "3",
            "--log-level",
            "warn",
            "--log-format",
            "pretty",
            "--plugin-dirs",
            str(tmp_path),
            "--log-file",
            str(tmp_path / "x.log"),
            "--worker-mode",
            "spawn",
        ]
    )
    config = options.config
    assert isinstance(config, RuntimeConfig)
    assert config.worker_dirs == (str(tmp_path / "a"), str(tmp_path / "b"))
    assert (config.port, config.listen, config.env, config.pool_size) == (
        9000,
        "tcp:9000",
        "production",
        3,
    )
    assert (config.log_level, config.log_format, config.worker_mode) == ("warn", "pretty", "spawn")
    assert config.plugin_dirs == (str(tmp_path),)
    assert config.log_file == str(tmp_path / "x.log")


def test_listen_takes_an_endpoint_string(clean_environ):
    options = parse(["-w", "apps", "--listen", "tcp:0:interface=127.0.0.1"])
    assert options.config.listen == "tcp:0:interface=127.0.0.1"
    assert options.config.port is None


def test_options_read_the_environment_and_dotenv(clean_environ, monkeypatch):
    with open(".env", "w") as dotenv:
        dotenv.write("RUNTIME_WORKER_DIRS=/from/dotenv\nPORT=7000\nRUNTIME_POOL_SIZE=4\n")
    monkeypatch.setenv("PORT", "7100")
    config = parse(["--pool-size", "2"]).config
    assert (config.worker_dirs, config.port, config.pool_size) == (("/from/dotenv",), 7100, 2)


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        (
            [],
            {},
            "buntime: workerDirs is required: set RUNTIME_WORKER_DIRS env var"
            " (or pass -w/--worker-dirs)",
        ),
        (["-w", "a", "--port", "abc"], {}, "buntime: --port must be an integer, got 'abc'"),
        (["-w", "a"], {"PORT": "abc"}, "buntime: PORT must be an integer, got 'abc'"),
        (
            ["-w", "a"],
            {"RUNTIME_ENV": "prod"},
            "buntime: RUNTIME_ENV must be one of development, staging, production, test, "
            "got 'prod'",
        ),
        (
            ["-w", "a"],
            {"BODY_SIZE_MAX": "lots"},
            "buntime: BODY_SIZE_MAX must be a size like 10mb, got 'lots'",
        ),
    ],
)
def test_bad_values_exit_2_with_one_stderr_line(
    clean_environ, monkeypatch, capsys, argv, env, line
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as caught:
        parse(argv)
    assert caught.value.code == 2
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    captured = capsys.readouterr()
    assert captured.err == line + "\n"
    assert captured.out == ""


# -- twistd -------------------------------------------------------------------------


def twistd(argv: list[str]) -> ServerOptions:
    options = ServerOptions()
    options.parseOptions(argv)
    return options


def test_the_plugin_is_found():
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert makers["buntime"].options is Options
    assert makers["buntime"].makeService is makeService


def test_foreground_twistd_logs_to_stdout_and_leaves_twistd_s_logger_alone(clean_environ):
    options = twistd(["-n", "buntime", "-w", "apps"])
    assert options["logger"] is None
    assert options.subOptions.console_path is None
    assert isinstance(options.subOptions.config, RuntimeConfig)


def test_daemonized_twistd_writes_our_lines_alone_to_its_log_file(clean_environ, tmp_path):
    """One format in twistd.log: no twistd prefix and second timestamp in front of ours."""
    options = twistd(["--logfile", str(tmp_path / "runtime.log"), "buntime", "-w", "apps"])
    assert options["logger"] is None
    assert options.subOptions.console_path == str(tmp_path / "runtime.log")
    default = twistd(["buntime", "-w", "apps"])
    assert default.subOptions.console_path == os.path.abspath("twistd.log")
    foreground = twistd(["-n", "--logfile", "runtime.log", "buntime", "-w", "apps"])
    assert foreground.subOptions.console_path == os.path.abspath("runtime.log")


def test_twistd_s_own_log_observer_is_the_logging_service_s(clean_environ):
    """twistd takes the application's ILogObserver: it writes nothing, the service does."""
    os.makedirs("apps")  # (cwd: an empty temporary directory)
    runtime = makeService(parse(["-w", "apps", "--listen", "tcp:0:interface=127.0.0.1"]))
    application = Application("buntime")
    runtime.setServiceParent(application)
    logging = runtime.getServiceNamed("logging")
    assert application.getComponent(ILogObserver) is logging.twistd_log
    assert runtime in list(IService(application))


def test_a_daemon_s_log_lines_go_to_its_console_path(tmp_path):
    path = tmp_path / "runtime.log"
    service = LoggingService(clock=Clock(), level="info", fmt="json", console_path=str(path))
    service.startService()
    try:
        log("info", "buntime:test:daemon", "to the file")
    finally:
        service.stopService()
    # eliot hands its first destination what was logged before there was one
    # (an earlier test's lines, say): only this test's line is looked for
    records = [json.loads(line) for line in path.read_text().splitlines()]
    [record] = [r for r in records if r.get("message_type") == "buntime:test:daemon"]
    assert record["message"] == "to the file"


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "--logger", "twisted.logger.textFileLogObserver", "buntime", "-w", "apps"],
        ["--logger", "twisted.logger.textFileLogObserver", "buntime", "-w", "apps"],
    ],
)
def test_an_explicit_logger_is_left_alone(clean_environ, argv):
    options = twistd(argv)
    assert options["logger"] is not None
    assert options.subOptions.console_path is None


def test_make_service(clean_environ):
    os.mkdir("apps")
    service = makeService(parse(["-w", "apps", "--listen", "tcp:0:interface=127.0.0.1"]))
    assert IService.providedBy(service)
    children = [child.name for child in service]
    assert children[0] == "logging"
    assert children[-1] == "web"
    assert not service.running
    assert service.on_serving[-1] is settle_memory


def test_settle_memory_freezes_what_exists_and_collects_less_often():
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        settle_memory()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_make_service_refuses_an_app_directory_that_does_not_exist(clean_environ, capsys):
    options = parse(["-w", "apps:nonexistent"])
    os.mkdir("apps")
    with pytest.raises(SystemExit) as caught:
        makeService(options)
    assert caught.value.code == 2
    missing = os.path.abspath("nonexistent")
    assert capsys.readouterr().err == (
        f"buntime: RUNTIME_WORKER_DIRS (or --worker-dirs): the app directory {missing}"
        " does not exist; create it (mkdir -p) or fix the path\n"
    )


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("bogus:1", "Unknown endpoint type: 'bogus'"),
        ("tcp:abc", "invalid literal for int() with base 10: 'abc'"),
        (
            "ssl:8443:privateKey=missing.pem",
            "[Errno 2] No such file or directory: '{cwd}/missing.pem'",
        ),
    ],
)
def test_make_service_refuses_a_listen_description_twisted_cannot_use(
    clean_environ, capsys, listen, reason
):
    os.mkdir("apps")
    options = parse(["-w", "apps", "--listen", listen])
    with pytest.raises(SystemExit) as caught:
        makeService(options)
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        "buntime: RUNTIME_LISTEN (or --listen) must be a Twisted endpoint like"
        f" tcp:8000:interface=127.0.0.1, got {listen!r}: {reason.format(cwd=os.getcwd())}\n"
    )


@pytest.mark.parametrize("broken", ["not a pem", "another pair's key"])
def test_make_service_refuses_tls_files_that_cannot_be_used(
    clean_environ, capsys, tmp_path, broken
):
    from test_e2e_tls import self_signed

    os.mkdir("apps")
    key, cert = self_signed(tmp_path)
    if broken == "not a pem":
        key.write_text("garbage\n")
    else:
        (tmp_path / "other").mkdir()
        key, _ = self_signed(tmp_path / "other")
    listen = f"ssl:8443:privateKey={key}:certKey={cert}"
    options = parse(["-w", "apps", "--listen", listen])
    with pytest.raises(SystemExit) as caught:
        makeService(options)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "buntime: RUNTIME_LISTEN (or --listen) must be a Twisted endpoint like"
        f" tcp:8000:interface=127.0.0.1, got {listen!r}: "
    )
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("code", "running", "told"), [(1, False, True), (0, False, False), (1, True, False)]
)
def test_a_failed_daemon_start_is_told_to_the_waiting_twistd(tmp_path, code, running, told):
    read, write = os.pipe()
    pidfile = tmp_path / "twistd.pid"
    pidfile.write_text("4242")
    parent = {"statusPipe": write, "pidfile": str(pidfile)}
    reactor = Clock()
    reactor.running = running  # type: ignore[attr-defined]
    report_failed_start(parent, reactor)(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        written = pipe.read()
    assert written == (b"1 buntime could not start: see the log" if told else b"")
    assert pidfile.exists() is not told


def test_reload_flag(clean_environ, monkeypatch):
    assert parse(["-w", "apps"]).config.reload is True  # development, the default
    assert parse(["-w", "apps", "--env", "test"]).config.reload is False
    assert parse(["-w", "apps", "--env", "production"]).config.reload is False
    assert parse(["-w", "apps", "--env", "test", "--reload"]).config.reload is True
    monkeypatch.setenv("RUNTIME_RELOAD", "0")
    assert parse(["-w", "apps"]).config.reload is False
    assert parse(["-w", "apps", "--reload"]).config.reload is True


def test_reload_is_refused_in_production(clean_environ, capsys):
    with pytest.raises(SystemExit):
        parse(["-w", "apps", "--env", "production", "--reload"])
    assert capsys.readouterr().err == (
        "buntime: --reload is for development: it cannot be on in production\n"
    )


def test_foreground_twistd_writes_no_pidfile_unless_asked(clean_environ):
    assert twistd(["-n", "buntime", "-w", "apps"])["pidfile"] == ""
    asked = twistd(["-n", "--pidfile", "run/buntime.pid", "buntime", "-w", "apps"])
    assert asked["pidfile"] == os.path.abspath("run/buntime.pid")
    daemon = twistd(["buntime", "-w", "apps"])
    assert daemon["pidfile"] == os.path.abspath("twistd.pid")
