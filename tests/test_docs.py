"""The README as a landing page and the documentation site's sources (docs/, mkdocs.yml).

The site itself is built by CI with `mkdocs build --strict` (the `docs` extra); these checks need
no mkdocs: the README stays short and carries the command CI runs, every page in the nav exists,
every relative link of the README and the pages points at a file, the API page covers the
public API.
"""

import re
from pathlib import Path

import pytest
import yaml

import bnonly

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
INSTALL = "pip install torch==2.13.0 -e '.[test]'"
TESTS = "python3 -m pytest -q"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


class _MkdocsLoader(yaml.SafeLoader):
    """mkdocs.yml may hold mkdocs' own tags (``!relative``, ``!ENV``); the nav needs none of them."""


_MkdocsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _nav_pages(nav) -> list[str]:
    """Every page of an mkdocs nav (a list of 'Title: page.md' mappings, possibly nested)."""
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _relative_links(page: Path) -> list[str]:
    """Targets of the Markdown links of ``page`` that point into the repository (no URL, no
    bare #anchor), without their #anchor; links inside code blocks and spans are not links."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [t.split("#", 1)[0] for t in LINK.findall(text)]
    return [t for t in targets if t and not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def _setup_block() -> str:
    section = README.read_text(encoding="utf-8").split("\n## Set up and run (two commands)\n", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_readme_is_a_landing_page_of_at_most_300_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300


def test_readme_setup_block_is_what_ci_runs():
    """The README's install and test commands are CI's: the same torch pin, CI's extras include
    the README's (`test`; CI may add more, e.g. `docs`), the same test command."""
    block, ci = _setup_block(), (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert INSTALL in block and TESTS in block
    ci_extras = re.search(r"pip install .*torch==2\.13\.0 -e '\.\[([\w,-]+)\]'", ci)
    assert ci_extras and "test" in ci_extras.group(1).split(",")
    assert f"\n{TESTS}\n" in ci


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    config = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_MkdocsLoader)
    pages = _nav_pages(config["nav"])
    assert pages[0] == "index.md" and "formats.md" in pages and "api.md" in pages
    assert [p for p in pages if not (DOCS / p).is_file()] == []
    assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(pages)


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    links = _relative_links(page)
    if page == README:
        assert any(link.startswith("docs/") for link in links)
    assert [t for t in links if not (page.parent / t).exists()] == []


def test_api_page_documents_every_public_name():
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: bnonly\.(\w+)$", api, re.M))
    assert {name for name in bnonly.__all__ if not name.startswith("__")} - documented == set()


def test_extending_page_includes_architecture_md():
    assert '--8<-- "ARCHITECTURE.md"' in (DOCS / "extending.md").read_text(encoding="utf-8")


def test_docs_extra_is_pinned():
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert extras["docs"] and all(re.fullmatch(r"[\w.\[\]-]+==[\w.]+", req) for req in extras["docs"])
    assert any(req.startswith("mkdocs==") for req in extras["docs"])
    assert any(req.startswith("mkdocstrings[python]==") for req in extras["docs"])
