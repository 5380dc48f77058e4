"""A griffe extension: a docstring entry that documents several parameters at
once gets their type and default.

The package's docstrings describe parameters that go together in one entry
(``start, end: (C,) scores of the first / last segment's label.``). Griffe's
parser looks the entry's name up in the signature, finds no parameter called
``start, end``, and mkdocstrings then shows it with no type and as *required*
although both default to None. This extension gives such an entry the
annotation and the default of its parameters in the signature (a class's
signature is its ``__init__``'s): the one they share, else each in order
(``20, 60``); none where one of them has none.

It runs after the Sphinx-roles extension (the docstring text is final) and
parses only the docstrings that hold such an entry; the parse is cached on the
docstring, so mkdocstrings renders this parse.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

GROUPED_ENTRY = re.compile(r"^[ \t]+\w+(?:[ \t]*,[ \t]*\w+)+[ \t]*(?:\([^)\n]*\))?[ \t]*:", re.M)


def _combined(values: list) -> Any:
    """The one value all of `values` render as, else all of them in order
    (``20, 60``); None where any of them is missing."""
    if any(value is None for value in values):
        return None
    if len({str(value) for value in values}) == 1:
        return values[0]
    return ", ".join(str(value) for value in values)


def complete(docstring: griffe.Docstring, signature: griffe.Parameters) -> None:
    """Give each grouped entry of `docstring`'s parameter sections the
    annotation and the default of its parameters in `signature`."""
    for section in docstring.parsed:
        if section.kind is not griffe.DocstringSectionKind.parameters:
            continue
        for entry in section.value:
            names = [name.strip() for name in entry.name.split(",")]
            if len(names) < 2 or not all(name in signature for name in names):
                continue
            parameters = [signature[name] for name in names]
            if entry.annotation is None:
                entry.annotation = _combined([parameter.annotation for parameter in parameters])
            if entry.value is None:
                entry.value = _combined([parameter.default for parameter in parameters])


class GroupedParameters(griffe.Extension):
    """Complete the grouped parameter entries of every docstring of a package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        seen: set = set()
        stack: list = [pkg]
        while stack:
            obj = stack.pop()
            if obj.is_alias or id(obj) in seen:
                continue
            seen.add(id(obj))
            documented = obj.docstring is not None and GROUPED_ENTRY.search(obj.docstring.value)
            if documented and (obj.is_function or obj.is_class):
                complete(obj.docstring, obj.parameters)
            stack.extend(obj.members.values())
