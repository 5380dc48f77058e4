"""mkdocs hook: the notebooks of ``notebooks/`` become pages of the site.

They live beside ``docs/``, not in it, so that Jupyter users find them at the
top of the repository. This hook adds each one to the site's files as
``notebooks/NAME.ipynb`` (before mkdocs-jupyter looks at the files), so that
mkdocs-jupyter renders it with its stored outputs and the navigation and
links can name it.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


@event_priority(100)  # before mkdocs-jupyter's own on_files (default priority 0)
def on_files(files, config):
    # A File whose source folder is the repository root: its src_uri is then both
    # its place in the site and its path on disk (mkdocs-jupyter reads it there).
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(File(f"notebooks/{path.name}", src_dir=str(ROOT), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files
