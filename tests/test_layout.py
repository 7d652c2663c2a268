"""The layout: imports run one way between app's packages, no module grows past 300 lines, the core
imports no web framework, and no test file imports another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
MAX_LINES = 300

#: Each package's layer. A module may import its own package and lower layers only; modules at the
#: top of app/ not listed here (config, exceptions, clock, logs, ...) are the base, layer 0.
LAYERS = {
    "tickets": 1,  # the trust core
    "session": 1,  # the session engine
    "upstreams": 2,  # models a session talks to
    "edge": 3,  # endpoints, replay stores, open sessions
    "main": 4,  # the app factory
    "server": 5,  # the start command, uvicorn, the server's bounds
    "ops": 5,  # operator commands
    "serve": 6,  # `python -m app.serve`, `app.keys`, `app.apikeys`: shims over the above
    "keys": 6,
    "apikeys": 6,
}
#: Packages that import neither Starlette nor uvicorn (nor does the base).
CORE = {"tickets", "session"}
WEB = ("starlette", "uvicorn")


def modules() -> list[Path]:
    return sorted(APP.rglob("*.py"))


def name_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(module: str) -> str:
    """`app.edge.mint` -> `edge`; `app.config` -> `config`; `app` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(module: str) -> int:
    return LAYERS.get(unit(module), 0)


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports (a `from app.x import y` counts `app.x.y` when that is a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            for alias in node.names:
                candidate = APP.parent.joinpath(*f"{node.module}.{alias.name}".split("."))
                if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
                    found.append((node.lineno, f"{node.module}.{alias.name}"))
    return found


def test_every_package_is_placed() -> None:
    packages = {p.parent.relative_to(APP).parts[0] for p in APP.glob("*/__init__.py")}
    assert packages - set(LAYERS) == set()


def upward(here: str, path: Path) -> list[str]:
    """The imports of module `here` (its source at `path`) that do not run downward."""
    return [
        f"line {line}: {target} (layer {layer(target)}) from layer {layer(here)}"
        for line, target in imports(path)
        if target.startswith("app.")
        and unit(target) != unit(here)
        and layer(target) >= layer(here)
        and not (layer(here) == 0 and layer(target) == 0)  # the base modules use each other
    ]


@pytest.mark.parametrize("path", modules(), ids=[name_of(p) for p in modules()])
def test_imports_run_downward(path: Path) -> None:
    assert upward(name_of(path), path) == []


@pytest.mark.parametrize("path", modules(), ids=[name_of(p) for p in modules()])
def test_module_is_at_most_300_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if layer(name_of(p)) == 0 or unit(name_of(p)) in CORE],
    ids=[name_of(p) for p in modules() if layer(name_of(p)) == 0 or unit(name_of(p)) in CORE],
)
def test_the_core_imports_no_web_framework(path: Path) -> None:
    web = [target for _, target in imports(path) if target.split(".")[0] in WEB]
    assert web == []


def test_no_test_file_imports_another() -> None:
    importing = [
        f"{path.name} imports {target}"
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        for _, target in imports(path)
        if target.split(".")[-1].startswith("test_")
    ]
    assert importing == []


@pytest.mark.parametrize(
    ("here", "source", "caught"),
    [
        ("app.session.core", "from app.edge.mint import mint\n", True),
        ("app.tickets.keys", "from app.session import limits\n", True),  # a sibling, not below
        ("app.config", "import app.server.cli\n", True),
        ("app.edge.mint", "from app.session.core import SessionCore\nfrom app import config\n", False),
        ("app.server.cli", "from app.main import create_app\n", False),
    ],
    ids=[
        "session-imports-edge",
        "tickets-imports-session",
        "base-imports-server",
        "edge-down",
        "server-down",
    ],
)
def test_the_rule_itself(tmp_path: Path, here: str, source: str, caught: bool) -> None:
    module = tmp_path / "module.py"
    module.write_text(source)
    assert bool(upward(here, module)) is caught
