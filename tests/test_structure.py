"""The back-end's shape (DESIGN §8): imports point one way, routes stay thin, modules stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

BFF = Path(__file__).resolve().parents[1] / "bff"

# Cycles inside parts other work is reshaping (the fake providers; the demo command and the CLI).
KNOWN_CYCLES = [
    {"bff.sandbox.app", "bff.sandbox.chat"},
    {"bff.cli", "bff.demo"},
]
# Modules allowed past ~500 lines, and why.
LONG_MODULES = {
    "client.py": "the Python client: its sync and async twins, one method per endpoint",
    "warehouse.py": "per-customer schemas, the COPY writer and its index, not yet split",
    "cli.py": "every `bff` command's argument parser and output",
    "connectors/definitions.py": "loading and cross-checking connector definitions",
    "connectors/session.py": "the read engine: auth, refresh, paging, retries",
    "query_tables.py": "query tables and the customer's read-only SQL role",
    "services/sync.py": "the sync runner: runs, streams, pages, resumes",
    "scripts/service.py": "script runs: queueing, per-customer caps, the sandbox trial (issue 20)",
}
SQL = re.compile(r"\b(SELECT\b.*\bFROM|INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b")


def module_name(path: Path) -> str:
    parts = path.relative_to(BFF.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in BFF.rglob("*.py") if "migrations" not in p.parts}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for guard in ast.walk(tree)
        if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
        for node in ast.walk(guard)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                target = f"{module}.{alias.name}"
                found.add(target if target in known else module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    known = modules()
    graph = {name: imports(name, path, set(known)) for name, path in known.items()}
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [{"a", "b"}]  # the check itself works
    assert [c for c in cycles(graph) if c not in KNOWN_CYCLES] == []


def test_routes_never_touch_sql_or_the_pool() -> None:
    offences = []
    for path in sorted((BFF / "api").glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                offences += [f"{path.name}: imports {n}" for n in names if n.split(".")[0] == "psycopg"]
            elif isinstance(node, ast.Attribute) and node.attr in ("pool", "store", "table"):
                # Routes reach the control database only through a service, never the store itself
                # nor a service's repository (``.table``).
                offences.append(f"{path.name}:{node.lineno}: .{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("connection", "transaction", "cursor")
            ):
                offences.append(f"{path.name}:{node.lineno}: .{node.func.attr}()")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if SQL.search(node.value):
                    offences.append(f"{path.name}:{node.lineno}: SQL text")
    assert offences == []


def test_modules_stay_small() -> None:
    long = {
        str(path.relative_to(BFF)): len(path.read_text().splitlines())
        for path in BFF.rglob("*.py")
        if "migrations" not in path.parts and "sandbox" not in path.parts
    }
    assert {name: n for name, n in long.items() if n > 500 and name not in LONG_MODULES} == {}


def test_the_last_row_per_parent_is_one_query_in_the_store() -> None:
    """A connection's and a script's last run(s) come from ``store.base.last_per_parent``: no
    repository writes its own "newest row of each parent" query."""
    own = [
        path.name
        for path in sorted((BFF / "store").glob("*.py"))
        if path.name != "base.py" and re.search(r"DISTINCT ON|ORDER BY id DESC LIMIT 1", path.read_text())
    ]
    assert own == []
