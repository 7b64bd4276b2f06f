"""The C{buntime} command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from buntime import __version__
from buntime.cli import main, twistd_argv


def test_help_describes_version_as_buntime_s(capsys, monkeypatch):
    """C{buntime --help} lists C{--version} as what it does: buntime's version, not Twisted's."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() sets it for twistd
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Display buntime's version and exit." in out
    assert "Twisted version" not in out


def test_twistd_buntime_version_is_buntime_s(capsys):
    """C{twistd -n buntime --version} prints buntime's version too."""
    from buntime.tap import Options

    with pytest.raises(SystemExit) as leaving:
        Options().parseOptions(["--version"])
    assert leaving.value.code == 0
    assert capsys.readouterr().out == f"buntime {__version__}\n"


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out == f"buntime {__version__}\n"
    main(["-w", "apps", "--version"])  # not twistd's "Twisted version: ..."
    assert capsys.readouterr().out == f"buntime {__version__}\n"


def test_it_runs_twistd_in_the_foreground_without_a_pidfile():
    assert twistd_argv(["-w", "apps", "--port", "9000"]) == [
        "--nodaemon",
        "--pidfile=",
        "buntime",
        "-w",
        "apps",
        "--port",
        "9000",
    ]


def test_the_console_script_passes_the_options_on(tmp_path):
    script = Path(sys.executable).with_name("buntime")
    result = subprocess.run(
        [str(script), "-w", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert f"the app directory {tmp_path / 'missing'} does not exist" in result.stderr
    assert not (tmp_path / "twistd.pid").exists()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--bogus"], "option --bogus not recognized"),
        (["-w", "apps", "--port"], "option --port requires argument"),
    ],
)
@pytest.mark.parametrize("command", ["buntime", "twistd"])
def test_an_unknown_option_exits_2_with_one_line(capsys, monkeypatch, argv, line, command):
    """As a bad value does, whether run as C{buntime} or as C{twistd -n buntime}."""
    from twisted.scripts.twistd import ServerOptions

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() sets it for twistd
    with pytest.raises(SystemExit) as leaving:
        if command == "buntime":
            main(argv)
        else:
            ServerOptions().parseOptions(["-n", "buntime", *argv])
    assert leaving.value.code == 2
    assert capsys.readouterr() == ("", f"buntime: {line} (--help lists the options)\n")
