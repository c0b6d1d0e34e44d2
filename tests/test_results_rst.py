"""bench/results_rst.py: the benchmark's Markdown results as reST for the docs."""

from __future__ import annotations

import sys
from pathlib import Path

import docutils.core
import docutils.nodes
import docutils.utils
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parents[1] / "bench"
DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(BENCH))

import results_rst  # noqa: E402

SAMPLE = """# trio-tun forwarding benchmark

2026-12-03, 2 CPUs; `iperf3` TCP 10 s.

- `trio-raw`: passthrough
- `c-offload`: C

| mode | streams | Gbit/s | vs C |
| --- | ---: | ---: | ---: |
| trio-raw | 1 | 6.54 | 0.65x |
| c-offload | 4 | FAILED | - |

## Target checks

- trio-raw >= 0.9x c-offload, 1 stream(s): MISS (0.65x)

## Forwarder counters (median run)

- trio-raw, 1 stream(s): `{"reads": 1}`
"""


def _doctree(rst: str) -> docutils.nodes.document:
    # Errors in the markup fail the conversion instead of becoming messages.
    return docutils.core.publish_doctree(
        rst, settings_overrides={"halt_level": docutils.utils.Reporter.WARNING_LEVEL}
    )


def _tables(tree: docutils.nodes.document) -> list[list[list[str]]]:
    tables = []
    for table in tree.findall(docutils.nodes.table):
        rows = [
            [entry.astext() for entry in row.findall(docutils.nodes.entry)]
            for row in table.findall(docutils.nodes.row)
        ]
        tables.append(rows)
    return tables


def test_sample_becomes_tables_lists_and_sections() -> None:
    rst = results_rst.convert(SAMPLE)
    tree = _doctree(rst)
    assert _tables(tree) == [
        [
            ["mode", "streams", "Gbit/s", "vs C"],
            ["trio-raw", "1", "6.54", "0.65x"],
            ["c-offload", "4", "FAILED", "-"],
        ]
    ]
    titles = [t.astext() for t in tree.findall(docutils.nodes.title)]
    assert titles == ["Target checks"]  # the counter dump is left out
    assert "reads" not in rst
    literals = [n.astext() for n in tree.findall(docutils.nodes.literal)]
    assert literals == ["iperf3", "trio-raw", "c-offload"]
    items = [n.astext() for n in tree.findall(docutils.nodes.list_item)]
    assert items[-1] == "trio-raw >= 0.9x c-offload, 1 stream(s): MISS (0.65x)"


cell = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters=".-x%,"),
    min_size=1,
    max_size=8,
)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda n: st.lists(st.lists(cell, min_size=n, max_size=n), min_size=2, max_size=6)
    )
)
def test_any_table_keeps_every_cell_in_place(rows: list[list[str]]) -> None:
    header, body = rows[0], rows[1:]
    markdown = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        + ["| " + " | ".join(row) + " |" for row in body]
    )
    assert _tables(_doctree(results_rst.convert(markdown))) == [rows]


def test_the_committed_docs_include_matches_the_committed_results() -> None:
    results = BENCH / "results.md"
    included = DOCS / "_generated" / "bench-results.inc"
    assert included.read_text() == results_rst.convert(results.read_text()), (
        "regenerate: python bench/results_rst.py bench/results.md "
        "-o docs/_generated/bench-results.inc"
    )
