"""The package's shape, kept by tests: no module reaches into another module's private
names, and no module grows past what a reader can hold. (The import layers and the absence
of cycles are import-linter contracts in pyproject.toml, run by .ci/lint-imports in CI.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# where each installed package's files live in the repository
PACKAGE_DIRS = {"vlmedge": REPO / "vlmedge", "vlmedge.exporters": REPO / "exporters",
                "vlmedge.runtimes": REPO / "runtimes"}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the installed package."""
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            found[name] = path
    return found


MODULES = _modules()


def _private_imports(name: str, path: Path) -> list[str]:
    """`from vlmedge.x import _y` in module `name` where vlmedge.x is another module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        source = node.module or ""
        if node.level:  # relative: resolve against this module's package
            base = package.split(".")
            source = ".".join(base[:len(base) - node.level + 1] + ([source] if source else []))
        if not source.startswith("vlmedge") or source == name:
            continue
        found += [f"{name}:{node.lineno} imports {alias.name} from {source}" for alias in node.names
                  if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_the_module_list_is_real():
    assert {"vlmedge.artifact", "vlmedge.runtimes.base", "vlmedge.exporters.pipeline"} <= set(MODULES)


def test_no_module_imports_another_modules_private_name():
    offenders = [line for name, path in MODULES.items() for line in _private_imports(name, path)]
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_stays_readable(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(REPO)} has {lines} lines; split it by idea"
