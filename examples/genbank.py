"""A small GenBank reader for gene-structure data: loci, their DNA and their CDS exons.

Only what a gene-finding example needs is read: the ``LOCUS`` line (name and
length), the ``CDS`` features of the ``FEATURES`` table (location and the
``/gene`` or ``/locus_tag`` qualifier) and the ``ORIGIN`` sequence. Everything
else (other features, other qualifiers, ``BASE COUNT``, references) is skipped.

Locations follow the INSDC feature-table syntax, restricted to one record:

- ``a..b`` (1-based, inclusive), a single base ``a``;
- ``join(l1,l2,...)`` (the exons of a spliced CDS), ``complement(l)`` (the
  reverse strand), nested either way round: ``complement(join(...))`` or
  ``join(complement(...),complement(...))``;
- partial ends ``<a..b`` and ``a..>b``: the coordinates are kept as written
  and the gene is flagged as open at its 5' or 3' end (in transcript order),
  since the true boundary lies beyond the written one.

Coordinates are converted to 0-based half-open ``(start, end)`` intervals in
increasing genomic order whatever the strand. Anything else (``order(...)``,
remote references ``X12345.1:1..10``, between-base sites ``a^b``, mixed
strands in one CDS, overlapping exons) raises ValueError naming the record.
"""
from __future__ import annotations

import gzip
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Feature-table keys start in column 6; continuation lines are indented 21 spaces.
_FEATURE_KEY = re.compile(r"^ {5}(\S+)\s+(.*)$")
_CONTINUATION = re.compile(r"^ {21}(.*)$")
_RANGE = re.compile(r"^(<?)(\d+)(?:\.\.(>?)(\d+))?$")


@dataclass(frozen=True)
class Gene:
    """One CDS feature.

    Attributes:
        name: the ``/gene`` (else ``/locus_tag``) qualifier, else ``"<locus>.cds<i>"``.
        strand: +1 (forward) or -1 (``complement``).
        exons: 0-based half-open ``(start, end)`` intervals, sorted by start,
            non-overlapping.
        open_5prime, open_3prime: the CDS continues past its first / last
            written base in transcript order (a ``<`` / ``>`` partial end).
    """

    name: str
    strand: int
    exons: tuple[tuple[int, int], ...]
    open_5prime: bool = False
    open_3prime: bool = False

    @property
    def start(self) -> int:
        """First position of the gene (0-based, genomic order)."""
        return self.exons[0][0]

    @property
    def end(self) -> int:
        """One past the last position of the gene."""
        return self.exons[-1][1]

    @property
    def introns(self) -> tuple[tuple[int, int], ...]:
        """The gaps between consecutive exons, 0-based half-open."""
        return tuple((a[1], b[0]) for a, b in zip(self.exons, self.exons[1:]))


@dataclass(frozen=True)
class Locus:
    """One GenBank record: `name`, `sequence` (lower case, as long as the
    LOCUS line says) and its CDS `genes`."""

    name: str
    sequence: str
    genes: tuple[Gene, ...]

    def __len__(self) -> int:
        return len(self.sequence)


def parse_location(text: str, length: int | None = None, where: str = "location"):
    """Parse a CDS location.

    Args:
        text: e.g. ``"complement(join(1..10,<20..30))"`` (whitespace is ignored).
        length: the record's length; when given, coordinates past it raise.
        where: names the record in error messages.

    Returns:
        `(strand, exons, open_5prime, open_3prime)`: +1 or -1, sorted 0-based
        half-open intervals, and the partial-end flags in transcript order.
    """
    compact = re.sub(r"\s+", "", text)
    if not compact:
        raise ValueError(f"{where}: empty location")
    parts = list(_location_parts(compact, False, where))
    strands = {strand for strand, *_ in parts}
    if len(strands) != 1:
        raise ValueError(f"{where}: location {compact!r} mixes both strands in one CDS")
    strand = -1 if strands.pop() else 1
    exons = sorted((start, end) for _, start, end, _, _ in parts)
    for (a, b), (c, d) in zip(exons, exons[1:]):
        if c < b:
            raise ValueError(f"{where}: location {compact!r} has overlapping exons {a + 1}..{b} and {c + 1}..{d}")
    if length is not None and exons[-1][1] > length:
        raise ValueError(f"{where}: location {compact!r} runs past the record's length {length}")
    open_low = any(low for _, start, _, low, _ in parts if start == exons[0][0])
    open_high = any(high for _, _, end, _, high in parts if end == exons[-1][1])
    open_5prime, open_3prime = (open_low, open_high) if strand == 1 else (open_high, open_low)
    return strand, tuple(exons), open_5prime, open_3prime


def _location_parts(text: str, reverse: bool, where: str) -> Iterator[tuple]:
    """Yield `(reverse, start, end, open_low, open_high)` for each range of a
    location (recursive over ``join`` and ``complement``)."""
    for operator, flips in (("complement(", True), ("join(", False)):
        if text.startswith(operator):
            if not text.endswith(")"):
                raise ValueError(f"{where}: unbalanced parentheses in {text!r}")
            inner = text[len(operator):-1]
            pieces = _split_top_level(inner, where) if operator == "join(" else [inner]
            for piece in pieces:
                yield from _location_parts(piece, reverse != flips, where)
            return
    match = _RANGE.match(text)
    if match is None:
        raise ValueError(f"{where}: unsupported location {text!r} (expected a..b, <a..>b, join(...) or "
                         f"complement(...); order(), remote references and a^b sites are not supported)")
    open_low, first, open_high, last = match.groups()
    start, end = int(first), int(last) if last is not None else int(first)
    if start < 1 or end < start:
        raise ValueError(f"{where}: range {text!r} must satisfy 1 <= start <= end")
    yield reverse, start - 1, end, bool(open_low), bool(open_high)


def _split_top_level(text: str, where: str) -> list[str]:
    """Split on the commas that are not inside parentheses."""
    pieces: list[str] = []
    depth = 0
    current: list[str] = []     # the characters of the piece being read
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{where}: unbalanced parentheses in {text!r}")
        if char == "," and depth == 0:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError(f"{where}: unbalanced parentheses in {text!r}")
    pieces.append("".join(current))
    if any(not piece for piece in pieces):
        raise ValueError(f"{where}: empty element in join({text})")
    return pieces


def parse_genbank(text: str, source: str = "<text>") -> list[Locus]:
    """All records of a GenBank flat file's text (records end with ``//``).

    Raises ValueError (naming `source` and the record) for a record without a
    LOCUS line or ORIGIN sequence, a sequence whose length differs from the
    LOCUS line's, or a CDS location :func:`parse_location` rejects.
    """
    loci: list[Locus] = []
    record: list[str] = []      # the lines of the record being read
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("//"):
            loci.append(_parse_record(record, f"{source}, record ending at line {number}"))
            record = []
        elif line.strip() or record:
            record.append(line)
    if any(line.strip() for line in record):
        raise ValueError(f"{source}: the last record is not terminated by '//'")
    return loci


def _parse_record(lines: Sequence[str], where: str) -> Locus:
    """One record's lines (without the closing ``//``) to a Locus."""
    if not lines or not lines[0].startswith("LOCUS"):
        raise ValueError(f"{where}: a record must start with a LOCUS line")
    fields = lines[0].split()
    if len(fields) < 3 or not fields[2].isdigit():
        raise ValueError(f"{where}: cannot read the name and length from {lines[0]!r}")
    name, length = fields[1], int(fields[2])
    where = f"{where} ({name})"
    try:
        origin = next(i for i, line in enumerate(lines) if line.startswith("ORIGIN"))
    except StopIteration:
        raise ValueError(f"{where}: no ORIGIN sequence") from None
    sequence = re.sub(r"[\d\s]", "", "".join(lines[origin + 1:])).lower()
    if len(sequence) != length:
        raise ValueError(f"{where}: the sequence has {len(sequence)} bases but LOCUS says {length}")
    genes: list[Gene] = []
    for key, location, qualifiers in _features(lines[1:origin]):
        if key != "CDS":
            continue
        strand, exons, open_5, open_3 = parse_location(location, length, f"{where}, CDS {location!r}")
        label = qualifiers.get("gene") or qualifiers.get("locus_tag") or f"{name}.cds{len(genes)}"
        genes.append(Gene(label, strand, exons, open_5, open_3))
    return Locus(name, sequence, tuple(genes))


def _features(lines: Sequence[str]) -> Iterator[tuple[str, str, dict[str, str]]]:
    """Yield `(key, location, qualifiers)` for each entry of the FEATURES
    table found in `lines` (location lines joined; qualifier values unquoted)."""
    inside, in_location = False, False
    key: str | None = None
    location: list[str] = []
    qualifiers: list[str] = []
    for line in lines:
        if line.startswith("FEATURES"):
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):  # the next section (BASE COUNT, CONTIG, ...)
            break
        feature = _FEATURE_KEY.match(line)
        if feature:
            if key is not None:
                yield key, "".join(location), _qualifier_dict(qualifiers)
            key, location, qualifiers, in_location = feature.group(1), [feature.group(2)], [], True
            continue
        continuation = _CONTINUATION.match(line)
        if key is None or continuation is None:
            continue
        text = continuation.group(1)
        if text.startswith("/"):
            in_location = False
            qualifiers.append(text)
        elif in_location:
            location.append(text)
        elif qualifiers:
            qualifiers[-1] += " " + text
    if key is not None:
        yield key, "".join(location), _qualifier_dict(qualifiers)


def _qualifier_dict(qualifiers: Sequence[str]) -> dict[str, str]:
    """``['/gene="abc"', '/pseudo']`` to ``{'gene': 'abc', 'pseudo': ''}``."""
    result: dict[str, str] = {}
    for qualifier in qualifiers:
        name, _, value = qualifier[1:].partition("=")
        result.setdefault(name, value.strip().strip('"'))
    return result


def read_genbank(path) -> list[Locus]:
    """The records of a GenBank file (plain or ``.gz``)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return parse_genbank(handle.read(), str(path))
