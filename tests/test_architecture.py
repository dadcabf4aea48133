"""The import structure docs/ARCHITECTURE.md draws holds: every module sits on one floor of
its "Floors" table, imports only from its own floor or the floors below, and no import
circle exists anywhere (function-level imports count)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dashlib"


def modules() -> dict[str, Path]:
    """dashlib module names ("config", "distill.methods", "distill" for a package) -> file."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The dashlib modules `name` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = (node.module or "").removeprefix("dashlib").lstrip(".")
                if not (node.module or "").startswith("dashlib"):
                    continue
            for alias in node.names:
                child = f"{module}.{alias.name}" if module else alias.name
                found.add(child if child in known else module)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("dashlib.") for a in node.names
                      if a.name.startswith("dashlib.")}
    return {m for m in found if m in known and m != name}


def floors() -> dict[str, int]:
    """Module -> floor, from the "Floors" table of docs/ARCHITECTURE.md."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Floors", 1)[1].split("\n## ", 1)[0]
    out: dict[str, int] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|[^|]*\|(.*)\|\s*$", line)
        if m:
            for module in re.findall(r"`([\w.]+)`", m.group(2)):
                assert module not in out, f"{module} is on two floors"
                out[module] = int(m.group(1))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_is_on_one_floor():
    placed = floors()
    assert sorted(set(modules()) - set(placed)) == [], "modules missing from the Floors table"
    assert sorted(set(placed) - set(modules())) == [], "the Floors table names modules that do not exist"


def test_imports_go_down_or_across_never_up():
    placed, upward = floors(), []
    for name, deps in graph().items():
        upward += [f"{name} (floor {placed[name]}) -> {d} (floor {placed[d]})"
                   for d in sorted(deps) if placed[d] > placed[name]]
    assert not upward, "imports that run up the floors:\n" + "\n".join(upward)


def circles(g: dict[str, set[str]]) -> list[str]:
    """Every import circle a depth-first walk of `g` meets, as "a -> b -> a"."""
    state: dict[str, str] = {}
    found: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(g[node]):
            if state.get(dep) == "open":
                found.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [])
    return found


def test_no_import_circles():
    found = circles(graph())
    assert not found, "import circles:\n" + "\n".join(found)


def test_the_configuration_floor_imports_nothing_from_dashlib():
    g = graph()
    assert g["config"] == set() and g["registry"] == set()
    assert "distributed" not in g["tirt"], "TIRT's maths must not read distributed state"


def test_the_checker_sees_a_planted_circle(tmp_path):
    # the circle test can fail: two files that import each other form a circle
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from dashlib.b import x\n")
    b.write_text("import dashlib.a\n")
    g = {"a": imports("a", a, {"a", "b"}), "b": imports("b", b, {"a", "b"}), "c": {"a"}}
    assert g["a"] == {"b"} and g["b"] == {"a"}
    assert circles(g) == ["a -> b -> a"]
