"""The gene-structure example's GenBank parser (examples/genbank.py) on a
hand-made fixture (tests/data/fixture.gb)."""
from __future__ import annotations

import gzip
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from genbank import Gene, parse_genbank, parse_location, read_genbank  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "data" / "fixture.gb"


@pytest.fixture(scope="module")
def loci():
    return read_genbank(FIXTURE)


# -- parser ------------------------------------------------------------------------------------------------------
def test_fixture_records(loci):
    assert [locus.name for locus in loci] == ["FIX_FWD", "FIX_REV"]
    assert [len(locus) for locus in loci] == [120, 150]
    assert loci[0].sequence.startswith("ttgacatataatgaaacccg") and loci[0].sequence.endswith("ataaataaat")
    assert loci[1].sequence[120:] == "atatatatatgcgcgcgcgctatatatata"
    assert "n" in loci[0].sequence and loci[0].sequence == loci[0].sequence.lower()


def test_fixture_genes(loci):
    forward, reverse = loci[0].genes
    assert forward == Gene("fwdA", 1, ((10, 30), (40, 60)))          # join(11..30,41..60), 1-based inclusive
    assert forward.introns == ((30, 40),) and (forward.start, forward.end) == (10, 60)
    assert reverse == Gene("revB", -1, ((90, 110),))                 # complement(91..110), /locus_tag
    (spliced,) = loci[1].genes                                       # location over two lines, no /gene
    assert spliced == Gene("FIX_REV.cds0", -1, ((0, 20), (40, 55), (70, 100)), open_5prime=False, open_3prime=True)
    assert spliced.introns == ((20, 40), (55, 70))


def test_gzip_file_reads_the_same(loci, tmp_path):
    path = tmp_path / "fixture.gb.gz"
    path.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    assert read_genbank(path) == loci


@pytest.mark.parametrize("text, expected", [
    ("1..10", (1, ((0, 10),), False, False)),
    ("5", (1, ((4, 5),), False, False)),
    ("join(1..10, 20..30)", (1, ((0, 10), (19, 30)), False, False)),
    ("complement(join(20..30,1..10))", (-1, ((0, 10), (19, 30)), False, False)),
    ("join(complement(20..30),complement(1..10))", (-1, ((0, 10), (19, 30)), False, False)),
    ("<1..>200", (1, ((0, 200),), True, True)),
    ("join(<1..10,20..30)", (1, ((0, 10), (19, 30)), True, False)),
    ("complement(join(<1..10,20..30))", (-1, ((0, 10), (19, 30)), False, True)),
    ("complement(1..>30)", (-1, ((0, 30),), True, False)),
])
def test_parse_location(text, expected):
    assert parse_location(text) == expected


@pytest.mark.parametrize("text, message", [
    ("order(1..10,20..30)", "unsupported location"),
    ("J00194.1:100..202", "unsupported location"),
    ("10^11", "unsupported location"),
    ("join(1..10,complement(20..30))", "mixes both strands"),
    ("join(1..10,5..30)", "overlapping exons"),
    ("join(1..10,,20..30)", "empty element"),
    ("join(1..10", "unbalanced"),
    ("30..10", "1 <= start <= end"),
    ("1..500", "runs past the record's length 100"),
    ("", "empty location"),
])
def test_parse_location_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_location(text, length=100)


def test_malformed_records_name_the_problem():
    good = FIXTURE.read_text().split("//\n")[0]
    with pytest.raises(ValueError, match="but LOCUS says 121"):
        parse_genbank(good.replace("FIX_FWD   120 bp", "FIX_FWD   121 bp") + "//\n")
    with pytest.raises(ValueError, match="no ORIGIN"):
        parse_genbank(good.split("ORIGIN")[0] + "//\n")
    with pytest.raises(ValueError, match="not terminated"):
        parse_genbank(good)
    with pytest.raises(ValueError, match="must start with a LOCUS line"):
        parse_genbank("FEATURES   x\n//\n")
