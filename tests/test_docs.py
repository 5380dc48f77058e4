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


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
