"""A griffe extension: Sphinx cross-reference roles in docstrings become links.

The package's docstrings write cross-references the Sphinx way
(``:class:`Segmentation```, ``:func:`~semiring_semicrf.scan.semimarkov_scan```,
``:mod:`.problem```). mkdocstrings does not read them, so they would show as
literal text. Once griffe has loaded the package, this extension rewrites every
role into an mkdocs-autorefs reference to the object it names, resolved from
the docstring owner's scope (its members, its module's imports, its parents)
the way Sphinx resolves it. The reference is *optional*: it renders as a link
where the target is documented on some page of the site, and as plain code
where it is not. A name that resolves to nothing renders as code.

Title rules follow Sphinx: ``~a.b.c`` shows ``c``; functions and methods get
``()``; ``title <target>`` shows ``title``.
"""
from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|attr|data|obj|exc|const):`(?P<body>[^`]+)`")
CALLABLE_ROLES = {"func", "meth"}


def _lookup(collection: Any, path: str) -> str | None:
    """The canonical path of the object at `path`, or None where there is none."""
    try:
        found = collection[path]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    if isinstance(found, griffe.Alias):
        try:
            return found.final_target.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return found.path


def resolve(name: str, owner: griffe.Object) -> str | None:
    """The path `name` refers to from the docstring of `owner`, or None."""
    collection = owner.modules_collection
    if name.startswith("."):  # relative: siblings of the owner's module first, then its own members
        rest = name.lstrip(".")
        module = owner.module
        prefixes = [module.parent.path if module.parent else module.path, module.path]
        if isinstance(owner, griffe.Class):
            prefixes.insert(0, owner.path)
        for prefix in prefixes:
            if (path := _lookup(collection, f"{prefix}.{rest}")) is not None:
                return path
        return None
    if (path := _lookup(collection, name)) is not None and "." in name:
        return path
    head, _, tail = name.partition(".")
    scope: griffe.Object | None = owner
    while scope is not None:  # the owner's scope, then each parent's (Sphinx looks in the class, then the module)
        try:
            base = scope.resolve(head)
        except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError):
            base = None
        if base is not None and (path := _lookup(collection, f"{base}.{tail}" if tail else base)) is not None:
            return path
        scope = scope.parent
    return _lookup(collection, name)


def rewrite(text: str, owner: griffe.Object) -> str:
    """`text` with every Sphinx role replaced by an optional autoref (or code)."""

    def replace(match: re.Match) -> str:
        role, body = match["role"], match["body"].strip()
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", body)
        target = explicit["target"] if explicit else body
        short = target.startswith("~")
        target = target.lstrip("~")
        if explicit:
            title = explicit["title"]
        else:
            title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
            if role in CALLABLE_ROLES and not title.endswith(")"):
                title += "()"
        path = resolve(target, owner)
        if path is None:
            return f"`{title}`"
        return (f'<autoref identifier="{html.escape(path)}" optional>'
                f"<code>{html.escape(title)}</code></autoref>")

    return ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        seen: set = set()
        stack: list = [pkg]
        while stack:
            obj = stack.pop()
            if obj.is_alias or id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj)
            stack.extend(obj.members.values())
