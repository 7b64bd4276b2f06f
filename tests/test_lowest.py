"""
C{.ci/lowest.txt} pins every runtime dependency to the lowest release
C{pyproject.toml} allows, so C{tox -e lowest} (run by C{.ci/run}) tests what
a user may get; C{tox.ini} and C{.ci/run} really run it.
"""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def runtime_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = (Requirement(line) for line in project["dependencies"])
    return {canonicalize_name(r.name): r for r in requirements}


def pins() -> dict[str, Version]:
    found = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            [spec] = requirement.specifier
            assert spec.operator == "==", line
            found[canonicalize_name(requirement.name)] = Version(spec.version)
    return found


def test_every_runtime_dependency_is_pinned_at_its_lower_bound():
    requirements, pinned = runtime_requirements(), pins()
    assert set(pinned) == set(requirements)
    for name, requirement in requirements.items():
        [lower] = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert pinned[name] == lower, f"{name}: .ci/lowest.txt pins {pinned[name]}, not {lower}"
        assert requirement.specifier.contains(pinned[name])


def test_tox_and_ci_run_the_lowest_env():
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert "lowest" in [env.strip() for env in tox["tox"]["envlist"].split(",")]
    assert "{toxinidir}/.ci/lowest.txt" in tox["testenv:lowest"]["set_env"]
    assert "tox -e lowest" in (ROOT / ".ci" / "run").read_text()
