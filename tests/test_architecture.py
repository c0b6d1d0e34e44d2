"""The package's shape: imports run one way, and no logic is written twice.

Both checks read the source with the standard library only (``ast``), so they
hold on any system and need no root.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "trio_tun"
PACKAGE = "trio_tun"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> set[str]:
    """Modules of the package that *module* imports, at any depth but TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith(PACKAGE):
                for alias in node.names:
                    found.add(_imported(target, alias.name) if node.module is None else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _imported(package: str, name: str) -> str:
    """What ``from package import name`` depends on: the submodule *name* where
    there is one (a compiled one has a ``.pyi`` beside it), else the package."""
    sub = f"{package}.{name}"
    if sub in MODULES or SRC.parent.joinpath(*sub.split(".")).with_suffix(".pyi").exists():
        return sub
    return package


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path, name) & MODULES.keys() for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _folder(module: str) -> str:
    path = MODULES[module]
    return str(path.parent.relative_to(SRC.parent))


def test_the_graph_is_read() -> None:
    graph = _graph()
    # A few edges that must be seen, so that an empty graph can't pass.
    assert "trio_tun._ports" in graph["trio_tun._stream"]
    assert "trio_tun.platform" in graph["trio_tun.platform.linux.backend"]
    assert "trio_tun.engine" in graph["trio_tun._stream"]  # imported inside a method


def test_no_module_cycles() -> None:
    assert _cycles(_graph()) == []


def test_no_folder_cycles() -> None:
    # The package's own top level holds the layers below the backends (config,
    # errors, ports, framings) *and* those above (open, testing): its modules
    # are checked one by one above.  Here: no sub-folder imports, directly or
    # through others, a sub-folder that imports it.
    root = _folder(PACKAGE)
    folders: dict[str, set[str]] = defaultdict(set)
    for module, targets in _graph().items():
        for target in targets:
            here, there = _folder(module), _folder(target)
            if here != there and root not in (here, there):
                folders[here].add(there)
    assert folders, "sub-folder edges must be seen"
    assert _cycles(dict(folders)) == []


def test_offload_imports_nothing_else_of_the_package() -> None:
    for module, targets in _graph().items():
        if module.startswith("trio_tun.offload"):
            assert all(t.startswith("trio_tun.offload") for t in targets), (module, targets)


def test_only_linux_backend_talks_netlink() -> None:
    for name, path in MODULES.items():
        if "pyroute2" in path.read_text() and not name.startswith("trio_tun.platform.linux"):
            # testing.py's namespace helpers are the one documented exception.
            assert name == "trio_tun.testing", name


# -- duplication --------------------------------------------------------------

WINDOW = 6
# Punctuation, bare keywords, and ``name=name,`` (an argument passed on as it is).
_TRIVIAL = re.compile(
    r"^([()\[\]{},:]*|pass|else:|try:|finally:|return|\.\.\.|(\w+)=\2,?|\)( ->.*)?:)$"
)


def _skipped_lines(text: str) -> set[int]:
    """Lines that are not logic: imports, docstrings and ``__all__``, however many lines."""
    skipped: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        span = None
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            span = node
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            span = node  # docstrings (and other bare strings)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            span = node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            # A signature is interface, not logic: public functions spell out
            # their keyword arguments on purpose (typing, docs).
            span = None
            skipped.update(range(node.lineno, node.body[0].lineno))
        if span is not None:
            skipped.update(range(span.lineno, (span.end_lineno or span.lineno) + 1))
    return skipped


def _code_lines(text: str) -> list[tuple[int, str]]:
    skipped = _skipped_lines(text)
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = " ".join(raw.split())
        if number in skipped or not line or line.startswith("#") or _TRIVIAL.match(line):
            continue
        out.append((number, line))
    return out


def duplicated_blocks(files: dict[str, str]) -> list[str]:
    """Places where the same six code lines stand twice (blank lines, comments,
    docstrings, imports and lone punctuation aside; white space folded)."""
    seen: dict[tuple[str, ...], str] = {}
    found = []
    for name, text in files.items():
        lines = _code_lines(text)
        i = 0
        while i <= len(lines) - WINDOW:
            key = tuple(line for _, line in lines[i : i + WINDOW])
            where = f"{name}:{lines[i][0]}"
            if key in seen:
                found.append(f"{where} repeats {seen[key]}")
                i += WINDOW
                continue
            seen[key] = where
            i += 1
    return found


def test_the_duplicate_finder_finds_duplicates() -> None:
    block = "\n".join(f"    x{i} = compute({i}, 'a')" for i in range(WINDOW))
    a = f"def f():\n{block}\n    return 1\n"
    b = f"def g():\n    y = 0\n{block}\n"
    assert duplicated_blocks({"a.py": a}) == []
    assert duplicated_blocks({"a.py": a, "b.py": b}) == ["b.py:3 repeats a.py:2"]
    # One line different is no duplicate.
    assert duplicated_blocks({"a.py": a, "b.py": b.replace("x3", "z3")}) == []


def test_no_six_line_block_stands_twice_in_src() -> None:
    files = {str(p.relative_to(SRC.parent)): p.read_text() for p in sorted(SRC.rglob("*.py"))}
    assert duplicated_blocks(files) == []
