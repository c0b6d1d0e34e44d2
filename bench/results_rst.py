"""The benchmark's Markdown results as reStructuredText, for the docs.

``bench/forward.py`` writes its results as Markdown (``bench/results.md``);
docs/performance.rst includes them, converted by this script, so that the
page always shows one whole run, tables as real tables::

    python bench/results_rst.py bench/results.md -o docs/_generated/bench-results.rst

Only what forward.py writes is understood: a title, paragraphs, ``## ``
sections, ``- `` bullets, inline code in backticks and pipe tables.  The
per-forwarder counter dump (a JSON line per cell) is left out: it is for
debugging, and stays in the Markdown file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

#: Sections of results.md not carried into the docs.
SKIPPED_SECTIONS: Final = frozenset({"Forwarder counters (median run)"})
_CODE: Final = re.compile(r"`([^`]+)`")
#: What reST would take for an enumerated list's marker ("1.", "a)", "iv.").
_ENUMERATOR: Final = re.compile(r"[0-9A-Za-z#]+[.)]")


def inline(text: str) -> str:
    """Markdown inline code to reST literals; other text as it is."""
    return _CODE.sub(lambda m: f"``{m.group(1)}``", text)


def _cell(text: str) -> str:
    # A cell that starts with punctuation ("-", "*", "1.") could read as a list
    # or a section marker: escape its first character.
    text = inline(text)
    marker = text and not text[0].isalnum() and not text.startswith("``")
    if marker or _ENUMERATOR.fullmatch(text):
        return "\\" + text
    return text


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(rows: list[str]) -> Iterator[str]:
    header, body = _cells(rows[0]), [_cells(r) for r in rows[2:]]
    yield ".. list-table::"
    yield "   :header-rows: 1"
    yield "   :class: numbers"
    yield ""
    for row in [header, *body]:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells, its header {len(header)}: {row}")
        for i, cell in enumerate(row):
            yield f"   {'* -' if i == 0 else '  -'} {_cell(cell)}".rstrip()
    yield ""


def convert(markdown: str) -> str:
    """The reST for *markdown* (forward.py's results file)."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    skipping = False
    while i < len(lines):
        line = lines[i]
        if line.startswith("# "):
            i += 1  # the page has its own title
            continue
        if line.startswith("## "):
            title = line[3:].strip()
            skipping = title in SKIPPED_SECTIONS
            if not skipping:
                out += [inline(title), "~" * len(inline(title)), ""]
            i += 1
            continue
        if skipping:
            i += 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            out += _table(rows)
            continue
        if line.startswith("- "):
            out.append(f"* {inline(line[2:])}")
            if i + 1 < len(lines) and not lines[i + 1].startswith("- "):
                out.append("")
            i += 1
            continue
        out.append(inline(line))
        i += 1
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("results", type=Path, help="forward.py's Markdown results")
    parser.add_argument("-o", "--output", type=Path, required=True, help="reST file to write")
    args = parser.parse_args(argv)
    try:
        text = convert(args.results.read_text())
    except (OSError, ValueError) as exc:
        print(f"{args.results}: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
