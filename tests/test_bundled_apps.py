"""
The apps in C{apps/} work right after the README's run command: what they
import is installed by it (the C{demo} extra), and each answers 200.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import pytest_twisted
from e2e_apps import DEMO_APPS, copy_demo

README = Path(__file__).resolve().parent.parent / "README.md"
BUNDLED = sorted(path.name for path in DEMO_APPS.iterdir() if (path / "manifest.yaml").exists())


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def readme_run_command() -> str:
    """The README's command that runs the runtime on the bundled apps."""
    text = README.read_text()
    [command] = re.findall(r"^python3 -m venv .*twistd -n .*buntime$", text, re.MULTILINE)
    return command


def installed_extras(command: str) -> set[str]:
    """The extras of this project a C{pip install -e '.[a,b]'} command installs."""
    [extras] = re.findall(r"pip install -e '?\.(?:\[([\w,]+)\])?'?", command)
    return set(extras.split(",")) if extras else set()


def distributions_for(extras: set[str]) -> set[str]:
    """buntime and the distributions it requires, with those of C{extras}."""
    found = set()
    for requirement in importlib.metadata.requires("buntime") or []:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert name is not None
        extra = re.search(r"""extra\s*==\s*['"]([\w-]+)['"]""", requirement)
        if extra is None or extra.group(1) in extras:
            found.add(_normalized(name.group(0)))
    found.add("buntime")
    return found


def third_party_imports(app: Path) -> set[str]:
    """The top-level modules an app's Python files import from outside itself and the stdlib."""
    local = {path.stem for path in app.glob("*.py")} | {p.name for p in app.iterdir() if p.is_dir()}
    names: set[str] = set()
    for path in app.glob("**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in local} - {
        "__future__"
    }


def test_the_readme_runs_the_bundled_apps_with_the_demo_extra():
    command = readme_run_command()
    assert "RUNTIME_WORKER_DIRS=./apps" in command
    assert installed_extras(command) == {"demo"}


@pytest.mark.parametrize("app", BUNDLED)
def test_what_a_bundled_app_imports_the_readme_installs(app):
    wanted = distributions_for(installed_extras(readme_run_command()))
    owners = importlib.metadata.packages_distributions()
    for module in third_party_imports(DEMO_APPS / app):
        assert module in owners, f"{app} imports {module}, which nothing installed provides"
        assert {_normalized(d) for d in owners[module]} & wanted, (
            f"{app} imports {module} ({owners[module]}): add it to the demo extra"
        )


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_every_bundled_app_answers_200(runtimes, tmp_path):
    for app in BUNDLED:
        copy_demo(tmp_path, app, layout="simple")
    proc = await runtimes.start(worker_dirs=[str(tmp_path)])
    answers = {}
    for app in BUNDLED:
        response = await proc.get(f"/{app}/")
        await response.content()
        answers[app] = response.code
    assert answers == {app: 200 for app in BUNDLED}
    assert len(BUNDLED) == 7  # the six demo apps and the shell (cpanel)
