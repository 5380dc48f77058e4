"""The documentation site: every ```python block runs, and the site builds
strictly (dangling links, missing pages and broken docstrings fail)."""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(page: Path) -> list:
    """`(first line number, source)` of each ```python block of a page."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def missing_modules(source: str) -> list:
    """Top-level modules a block imports that are not installed."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


def test_pages_found():
    assert {"index.md", "install.md", "model.md", "semirings.md", "algorithm.md", "faq.md"} <= {p.name for p in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_blocks_run(page, tmp_path, monkeypatch):
    """Run a page's python blocks in order, in one namespace, in a scratch
    directory (what a reader pasting them one after the other would get).
    From the first block that imports a package that is not installed on,
    the page's remaining blocks are skipped (they may build on it)."""
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no python blocks")
    import matplotlib
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    for line, source in blocks:
        missing = missing_modules(source)
        if missing:
            pytest.skip(f"{page.name}: blocks from line {line} on need {', '.join(missing)}, not installed "
                        "(the blocks before it ran)")
        code = compile(source, f"{page.relative_to(ROOT)} (block at line {line})", "exec")
        exec(code, namespace)


RAW_ROLE = re.compile(r":(class|func|meth|mod|attr):(`|<code>)")
SITE_MODULES = ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material", "mkdocs_jupyter", "griffe")


def _needs_site_tools():
    for module in SITE_MODULES:
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once with ``mkdocs build --strict`` (warnings fail it)."""
    _needs_site_tools()
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_COLOR": "1", "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_mkdocs_build_strict_has_no_raw_sphinx_roles(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    raw = {str(p.relative_to(site)): sorted(set(RAW_ROLE.findall(p.read_text()))) for p in pages}
    assert not {page: roles for page, roles in raw.items() if roles}
    api = (site / "api" / "core" / "index.html").read_text()
    assert 'class="autorefs autorefs-internal"' in api  # the roles became links


def test_site_renders_maths_notebooks_and_the_tutorial_outputs(site):
    for page in ("model", "algorithm"):
        assert (site / page / "index.html").read_text().count('class="arithmatex"') >= 5, page
    assert (site / "assets" / "katex" / "katex.min.js").is_file()  # vendored: the maths renders offline
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        html = (site / "notebooks" / path.stem / "index.html").read_text()
        assert "jp-Cell" in html and "jp-OutputArea-output" in html, path.stem  # cells and their stored outputs
    tutorial = (site / "tutorial" / "index.html").read_text()
    assert tutorial.count('class="block-output"') >= 1  # the figure its plotting block draws
    assert "Output" in tutorial and "B=2, T=20, K=6, C=3" in tutorial  # what its first block prints


def test_sphinx_roles_extension_links_what_it_resolves():
    _needs_site_tools()
    import griffe

    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        from sphinx_roles import SphinxRoles, rewrite
    finally:
        sys.path.remove(str(DOCS / "hooks"))
    package = griffe.load("semiring_semicrf", search_paths=[str(ROOT)],
                          extensions=griffe.load_extensions(SphinxRoles))
    synthetic = package["synthetic"]
    text = rewrite(":func:`duration_ranges`, :class:`~semiring_semicrf.nn.SemiMarkovCRFHead`, "
                   ":meth:`Segmentation.to_segments`, :mod:`.scan` and :class:`NoSuchThing`", synthetic)
    assert text == ('<autoref identifier="semiring_semicrf.synthetic.duration_ranges" optional>'
                    "<code>duration_ranges()</code></autoref>, "
                    '<autoref identifier="semiring_semicrf.nn.SemiMarkovCRFHead" optional>'
                    "<code>SemiMarkovCRFHead</code></autoref>, "
                    '<autoref identifier="semiring_semicrf.segmentation.Segmentation.to_segments" optional>'
                    "<code>Segmentation.to_segments()</code></autoref>, "
                    '<autoref identifier="semiring_semicrf.scan" optional><code>scan</code></autoref> and '
                    "`NoSuchThing`")
    assert not RAW_ROLE.search(package["demo"].docstring.value)  # every docstring was rewritten on load
