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

A docstring that holds such an entry is replaced, as griffe loads its function
or class, by one whose parse completes the entry; the parse runs when
mkdocstrings renders it, after every other extension (the Sphinx roles) has
rewritten the text.
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


def complete(sections: list, signature: griffe.Parameters) -> None:
    """Give each grouped entry of the parameter `sections` the annotation and
    the default of its parameters in `signature`."""
    for section in sections:
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


class GroupedDocstring(griffe.Docstring):
    """A docstring whose parse completes its grouped parameter entries."""

    def parse(self, parser: Any = None, **options: Any) -> list:
        sections = super().parse(parser, **options)
        if isinstance(self.parent, (griffe.Function, griffe.Class)):  # the only parents _replace gives it
            complete(sections, self.parent.parameters)
        return sections


class GroupedParameters(griffe.Extension):
    """Give each function and class whose docstring groups parameters a
    `GroupedDocstring`."""

    def _replace(self, obj: griffe.Function | griffe.Class) -> None:
        docstring = obj.docstring
        if docstring is None or not GROUPED_ENTRY.search(docstring.value):
            return
        obj.docstring = GroupedDocstring(docstring.value, lineno=docstring.lineno, endlineno=docstring.endlineno,
                                         parent=obj, parser=docstring.parser, parser_options=docstring.parser_options)

    def on_function(self, *, func: griffe.Function, **kwargs: Any) -> None:
        self._replace(func)

    def on_class(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        self._replace(cls)
