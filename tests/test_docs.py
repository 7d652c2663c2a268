"""The documentation: every relative link resolves, and nothing points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "bench" / "PERFORMANCE.md",
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a page: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    in_fence = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://127.0.0.1", "http://localhost")):
            continue
        path, _, anchor = target.partition("#")
        assert "://" not in path, f"{page.name} links outside the repository: {target}"
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_reference_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert re.search(r"\bS[P]EC\b|public API document", text) is None


def test_readme_is_short_and_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in PAGES[1:]:
        assert str(page.relative_to(ROOT)) in readme


def test_code_cites_only_what_ships() -> None:
    """Comments and docstrings cite docs/ pages, RFCs or decisions.md, never an unshipped document."""
    sources = [p for d in ("app", "tests", "bench") for p in sorted((ROOT / d).rglob("*.py"))]
    citing = [str(p.relative_to(ROOT)) for p in sources if re.search(r"\bS[P]EC\b", p.read_text())]
    assert citing == []
