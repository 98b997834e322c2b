"""The README is a front page that links every docs page, and no relative link in the README,
docs/ or the folders' READMEs points at a file or a heading that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "docker" / "README.md", ROOT / "tune_spaces" / "README.md"]
README_MAX_LINES = 200

LINK = re.compile(r"\]\(([^()\s]+)\)")  # the target of [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)


def prose(path: Path) -> str:
    """The file without its fenced code blocks (a `# comment` there is no heading)."""
    return FENCE.sub("", path.read_text())


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path)) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(page):
    broken = []
    for target in relative_links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_readme_is_a_front_page_linking_every_docs_page():
    assert len(README.read_text().splitlines()) <= README_MAX_LINES
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert DOCS and not [p.name for p in DOCS if p.resolve() not in linked]


def test_anchor_rule_matches_github():
    page = ROOT / "docs" / "benchmarks.md"
    assert "on-a-gpu-benchmarksgpu_checkpy" in anchors(page)
