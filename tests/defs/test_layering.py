"""Data flows one way: defs -> core -> db. The Dagster layer (tenant_pipelines/defs/) runs no SQL
of its own; core imports neither Dagster nor the layers above it; the local development stack
(tenant_pipelines.local) is reached only from the command line and from defs/resources.py.

Imports are read with ``ast``, everywhere in a file: a function-level import counts too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tenant_pipelines.settings import PROJECT_DIR

PACKAGE = PROJECT_DIR / "tenant_pipelines"
DEFS, CORE = PACKAGE / "defs", PACKAGE / "core"

# Data-manipulating SQL in a string literal (uppercase, as this project writes SQL).
SQL_TEXT = re.compile(r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b")
RUNS_SQL = {"execute", "executemany"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved), at any depth; for
    ``from m import n`` both ``m`` and ``m.n`` (n may be a submodule)."""
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def imports_any(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def sql_in(path: Path, source: str | None = None) -> list[str]:
    """Where ``path`` runs SQL itself: a ``.execute(...)`` call, a ``sql.SQL(...)`` composition,
    or a string literal holding SQL."""
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in RUNS_SQL or name == "SQL":
                problems.append(f"{path.name}:{node.lineno}: calls {name}(...)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_TEXT.search(node.value):
            problems.append(f"{path.name}:{node.lineno}: SQL in a string: {node.value.strip()[:60]!r}")
    return problems


def test_the_checks_see_what_they_look_for() -> None:
    sample = DEFS / "sample.py"
    source = (
        "def f(conn):\n"
        "    from tenant_pipelines.local import target\n"
        "    from ..core import tiering\n"
        "    conn.execute('SELECT tier\\n FROM tier_limits')\n"
        "    q = 'DELETE FROM t'\n"
    )
    assert len(sql_in(sample, source)) == 3
    assert {"tenant_pipelines.local", "tenant_pipelines.local.target", "tenant_pipelines.core.tiering"} <= (
        imported_modules(sample, source))


def test_the_dagster_layer_runs_no_sql() -> None:
    problems = [p for path in python_files(DEFS) for p in sql_in(path)]
    assert not problems, "SQL belongs in tenant_pipelines/core (a function the defs call):\n" + "\n".join(problems)


def test_domains_share_only_through_shared_py() -> None:
    domains = sorted(p.name for p in DEFS.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert domains, "one folder per domain"
    crossings = []
    for domain in domains:
        others = tuple(f"tenant_pipelines.defs.{d}" for d in domains if d != domain)
        for path in python_files(DEFS / domain):
            crossings += [f"{path.relative_to(PACKAGE)} imports {m}" for m in imports_any(imported_modules(path), others)]
    assert not crossings, "\n".join(crossings)


def test_core_imports_neither_dagster_nor_the_layers_above_it() -> None:
    above = ("dagster", "tenant_pipelines.defs", "tenant_pipelines.definitions", "tenant_pipelines.cli",
             "tenant_pipelines.local")
    found = [f"{path.relative_to(PACKAGE)} imports {m}"
             for path in python_files(CORE) for m in imports_any(imported_modules(path), above)]
    assert not found, "\n".join(found)


def test_tiering_stands_alone_in_core() -> None:
    path = CORE / "tiering.py"
    found = [m for m in imports_any(imported_modules(path), ("tenant_pipelines.core",)) if m != module_name(path)]
    assert not found, f"core/tiering.py imports {found}"


def test_only_the_cli_and_the_resources_reach_the_local_stack() -> None:
    allowed = {PACKAGE / "defs" / "resources.py"}
    found = []
    for path in python_files(PACKAGE):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "local" or relative.parts[0].startswith("cli") or path in allowed:
            continue
        found += [f"{relative} imports {m}" for m in imports_any(imported_modules(path), ("tenant_pipelines.local",))]
    assert not found, "tenant_pipelines.local is for the CLI and defs/resources.py only:\n" + "\n".join(found)
