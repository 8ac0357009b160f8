"""The layering every service keeps: SQL only in store.py, no aiohttp.web below the handlers.

Read from the source with ``ast``, so that a docstring or a comment never counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from services import registry

SERVICES = Path(registry.SERVICES_DIR)
SQL_METHODS = frozenset(
    {"fetch", "fetchrow", "fetchval", "execute", "executemany", "copy_records_to_table"}
)
#: Modules of a service that speak HTTP to the outside world (the web app and its handlers).
WEB_MODULES = frozenset(
    {"app.py", "handlers.py", "routes.py", "consumers.py", "keys.py", "__main__.py"}
)


def service_modules() -> list[Path]:
    return sorted(p for name in registry.SERVICE_NAMES for p in (SERVICES / name).glob("*.py"))


def sql_calls(tree: ast.AST) -> list[int]:
    """Lines calling a driver method on a connection-like object: ``x.fetch(...)`` etc."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in SQL_METHODS
        and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "store")
    ]


def imports_web(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "aiohttp"
            and any(alias.name == "web" for alias in node.names)
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiohttp.web"):
            return True
        if isinstance(node, ast.Import) and any(
            a.name.startswith("aiohttp.web") for a in node.names
        ):
            return True
    return False


@pytest.mark.parametrize("module", service_modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sql_lives_in_store_py(module: Path) -> None:
    tree = ast.parse(module.read_text())
    if module.name == "store.py":
        return
    assert sql_calls(tree) == [], f"{module}: SQL outside store.py at lines {sql_calls(tree)}"


@pytest.mark.parametrize("module", service_modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_rules_do_not_import_the_web_framework(module: Path) -> None:
    if module.name in WEB_MODULES:
        return
    assert not imports_web(ast.parse(module.read_text())), f"{module} imports aiohttp.web"


def test_the_checks_see_what_they_look_for() -> None:
    tree = ast.parse(
        "from aiohttp import web\nasync def f(conn):\n    await conn.fetch('SELECT 1')\n"
    )
    assert sql_calls(tree) == [3]
    assert imports_web(tree)
    assert not imports_web(ast.parse('"""No aiohttp.web in here."""\nimport aiohttp\n'))
