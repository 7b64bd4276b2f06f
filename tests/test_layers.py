"""
The layers of the package (docs/architecture.md), checked on its imports:
value types import nothing of the runtime; logs only value types; apps,
the pool and plugins nothing of the layers above them; the worker child
nothing of the runtime's side; web and plugins not each other both ways.

Imports are read from the source (C{ast}), those under C{if TYPE_CHECKING:}
left out: a type named for mypy is not a dependency at run time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import buntime

PACKAGE = Path(buntime.__file__).parent

VALUE_TYPES = {
    "buntime.http",
    "buntime.headers",
    "buntime.interfaces",
    "buntime.units",
    "buntime._json",
    "buntime.trust",
    "buntime.sensitive",
}
MECHANISMS = {
    "buntime.once",
    "buntime.stream",
    "buntime.memchannel",
    "buntime.forms",
    "buntime.sse",
    "buntime.fresh",
    "buntime.sockets",
    "buntime.cpus",
}
"""Small Twisted helpers any layer may use; they import nothing of buntime."""
LOW = {
    "buntime",
    "buntime._libc",
    "buntime.manifest",
    "buntime.manifest_fields",
    "buntime.archive",
    "buntime.unpacked",
    *VALUE_TYPES,
    *MECHANISMS,
}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skipped.update(id(inner) for inner in ast.walk(node))
    return skipped


def _imported(module: str, name: str) -> str:
    """What C{from module import name} imports: a submodule, or C{module} itself."""
    inside = PACKAGE.parent.joinpath(*module.split("."), name)
    if inside.with_suffix(".py").exists() or (inside / "__init__.py").exists():
        return f"{module}.{name}"
    return module


def imports() -> dict[str, set[str]]:
    """Every module of the package and the buntime modules it imports at run time."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        skipped = _type_checking(tree)
        names: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("buntime"):
                names.update(_imported(node.module or "", alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names if alias.name.startswith("buntime"))
        found[_name(path)] = names
    return found


def _within(module: str, prefixes: set[str]) -> bool:
    """Whether C{module} is one of C{prefixes} or inside one (C{buntime} itself: only itself)."""
    return any(
        module == prefix or (prefix != "buntime" and module.startswith(prefix + "."))
        for prefix in prefixes
    )


RULES = [
    # (who, what it may import of buntime)
    ("value types", VALUE_TYPES, VALUE_TYPES | {"buntime"}),
    ("mechanisms", MECHANISMS, {"buntime"}),
    ("logs", {"buntime.logs"}, {"buntime.logs"} | LOW),
    ("apps", {"buntime.apps"}, {"buntime.apps", "buntime.logs"} | LOW),
    (
        "worker child",
        {"buntime.pool.child"},
        {
            "buntime.pool.child",
            "buntime.pool.commands",
            "buntime.pool.events",
            "buntime.pool.stream",
            "buntime.pool.wire",
            "buntime.pool.output",
            "buntime.apps.resolve",
            "buntime._turn",
        }
        | LOW,
    ),
    (
        "pool",
        {"buntime.pool"},
        {"buntime.pool", "buntime.logs", "buntime._turn", "buntime.apps.resolve"} | LOW,
    ),
    ("plugins", {"buntime.plugins"}, {"buntime.plugins", "buntime.logs"} | LOW),
    # built-in plugins use the public plugin API only (the context reaches the rest)
    ("built-ins", {"buntime.builtins"}, {"buntime.builtins"} | VALUE_TYPES | MECHANISMS),
    (
        "web",
        {"buntime.web"},
        {
            "buntime.web",
            "buntime.logs",
            "buntime.apps",
            "buntime.pool",
            "buntime.plugins",
            "buntime._turn",
        }
        | LOW,
    ),
]


@pytest.mark.parametrize(("layer", "members", "allowed"), RULES, ids=[rule[0] for rule in RULES])
def test_each_layer_imports_only_the_layers_below_it(layer, members, allowed):
    wrong = {
        module: sorted(name for name in names if not _within(name, allowed))
        for module, names in imports().items()
        if _within(module, members)
    }
    assert {module: names for module, names in wrong.items() if names} == {}


def test_the_rules_cover_modules_that_exist():
    modules = imports()
    for _, members, _ in RULES:
        assert any(_within(module, members) for module in modules), members


def test_nothing_of_the_runtime_imports_the_benchmark():
    wrong = {
        module: sorted(name for name in names if _within(name, {"buntime.bench"}))
        for module, names in imports().items()
        if not _within(module, {"buntime.bench"})
    }
    assert {module: names for module, names in wrong.items() if names} == {}


ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def _layer_row(layer: str) -> set[str]:
    """The modules the layer table of docs/architecture.md names for C{layer}."""
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 2 and cells[1] == layer:
            return {f"buntime.{name}" for name in re.findall(r"`([\w.]+)`", cells[2])}
    raise AssertionError(f"no {layer!r} row in {ARCHITECTURE}")


def test_the_architecture_page_lists_the_layers_this_test_checks():
    assert _layer_row("value types") == VALUE_TYPES
    assert _layer_row("mechanisms") == MECHANISMS


def test_every_module_the_architecture_page_names_exists():
    named = set(re.findall(r"`((?:buntime/)?[\w/]+(?:\.py|/))`", ARCHITECTURE.read_text()))
    assert len(named) > 40
    files = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")}

    def exists(name: str) -> bool:
        if (PACKAGE.parent / name).exists() or (PACKAGE / name).exists():
            return True
        # a file the page names inside the folder it is describing: asgi.py of pool/child/
        return "/" not in name and any(file.endswith("/" + name) for file in files)

    missing = [name for name in sorted(named) if not exists(name)]
    assert missing == []
