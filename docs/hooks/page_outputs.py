"""mkdocs hook: a page whose front matter says ``show_outputs: true`` shows
what its ``python`` blocks print and draw.

At build time the page's blocks run in order, in one namespace, in a scratch
directory (as ``tests/test_docs.py`` runs them); after each block, what it
printed follows as an "Output" block and each matplotlib figure it left open
follows as an image embedded in the page. A block that fails stops the build
with the page, the block's line and the error.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import tempfile
import traceback

from mkdocs.exceptions import PluginError

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def _figures() -> list:
    """PNG bytes of every open matplotlib figure, which are then closed."""
    import matplotlib.pyplot as plt

    images = []
    for number in plt.get_fignums():
        figure = plt.figure(number)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        images.append(buffer.getvalue())
    return images


def _run(source: str, where: str, namespace: dict) -> tuple:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(source, where, "exec"), namespace)
    except Exception as err:
        raise PluginError(f"{where} failed:\n{traceback.format_exc()}") from err
    return printed.getvalue(), _figures()


def on_page_markdown(markdown, page, config, files):
    if not page.meta.get("show_outputs"):
        return markdown
    import matplotlib

    matplotlib.use("Agg")
    namespace = {"__name__": f"docs_{page.file.name}"}
    pieces, last = [], 0
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            for match in FENCE.finditer(markdown):
                line = markdown.count("\n", 0, match.start(1)) + 1
                printed, images = _run(match.group(1), f"{page.file.src_uri} (block at line {line})", namespace)
                pieces.append(markdown[last:match.end()])
                last = match.end()
                if printed:
                    pieces.append(f'\n\n```{{.text .printed title="Output"}}\n{printed.rstrip()}\n```')
                for png in images:
                    data = base64.b64encode(png).decode("ascii")
                    pieces.append(f'\n\n<img class="block-output" alt="Figure drawn by the block above" '
                                  f'src="data:image/png;base64,{data}">')
        finally:
            os.chdir(here)
    pieces.append(markdown[last:])
    return "".join(pieces)
