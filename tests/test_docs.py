"""The docs keep up with the code: every module has a line in ARCHITECTURE.md, and
relative links in the README and docs/ point at files that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rows(text: str) -> dict[str, str]:
    """Module-table rows keyed by their first cell (`x.py` or `pkg/`)."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|(.*)", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_architecture_names_every_module():
    rows = _rows((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    missing = []
    for path in sorted((ROOT / "dashlib").rglob("*.py")):
        rel = path.relative_to(ROOT / "dashlib")
        if len(rel.parts) == 1:
            if rel.name != "__init__.py" and rel.name not in rows:
                missing.append(str(rel))
        else:
            row = rows.get(f"{rel.parts[0]}/", "")
            if f"`{rel.name}`" not in row:
                missing.append(str(rel))
    assert not missing, f"docs/ARCHITECTURE.md does not describe: {missing}"


def test_relative_links_in_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_docs_point_to_the_papers_summary_in_the_repository():
    paper = (ROOT / "docs" / "paper.md").read_text()
    for claim in ("C1", "C2", "C3", "C4", "C5", "C6"):
        assert f"| {claim} |" in paper
    assert "8.87" in paper and "5.47" in paper  # Table 1: DASH and the teacher on CIFAR-10
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "PAPER.md" not in page.read_text(), page.name
