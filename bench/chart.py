"""The forwarding benchmark's results as an SVG bar chart (no plotting library).

One horizontal bar per (mode, iperf3 streams) cell, grouped by mode: the
median Gbit/s, labelled with its value and its ratio to the C offload
forwarder (``c-offload``) measured in the same run, whose own bars are
hatched.  Cells that failed, were skipped or were not run are listed as
"n/a", never drawn as zero.  Same cells in, same bytes out.

``bench/forward.py`` writes the chart from what it measured, next to its
Markdown results.  From a results file already written::

    python bench/chart.py bench/results.md -o docs/_static/bench.svg
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol

import attrs

#: The mode every bar is compared with, and whose bars are drawn hatched.
REFERENCE: Final = "c-offload"

# Layout, in SVG user units (= CSS pixels at the intended 800 px width).
WIDTH: Final = 800
MARGIN: Final = 16
# Text sizes: the chart is often shown a little narrower than 800 px.
FONT: Final = 13
SMALL: Final = 12
LABEL_CHAR: Final = 7.8  # mean advance of one 13 px sans-serif character, generous
VALUE_CHAR: Final = 7.0  # the same at 12 px
MODE_LABEL_MAX: Final = 220  # longer mode names are cut, the chart stays readable
BAR_HEIGHT: Final = 16
BAR_GAP: Final = 3
GROUP_GAP: Final = 10
TITLE_HEIGHT: Final = 44
LEGEND_LINE: Final = 20
AXIS_HEIGHT: Final = 40
TARGET_TICKS: Final = 6
# Colour-blind-safe palette (one colour per stream count, in ascending order).
PALETTE: Final = ("#4477aa", "#ee7733", "#228833", "#aa3377", "#66ccee", "#ccbb44", "#888888")
HATCH: Final = "#1a1a1a"
TEXT: Final = "#1a1a1a"
MUTED: Final = "#666666"
GRID: Final = "#d9d9d9"

# The Markdown results table's column headers that the parser needs.
MODE_COLUMN: Final = "mode"
STREAMS_COLUMN: Final = "streams"
GBPS_COLUMN: Final = "Gbit/s"
# forward.py calls the c-offload ratio column "vs C passthrough".
RATIO_COLUMNS: Final = ("vs C passthrough", f"vs {REFERENCE}")


@attrs.frozen
class Cell:
    """One (mode, streams) entry of the results table."""

    mode: str
    streams: int
    #: Median throughput; None when nothing was measured (see *status*).
    gbps: float | None
    #: gbps over the reference's at the same stream count, when both were measured.
    ratio: float | None = None
    #: Why there is no measurement: "FAILED", "SKIPPED", "not run"; "" if measured.
    status: str = ""


# -- input --------------------------------------------------------------------------


class _Measured(Protocol):
    @property
    def gbps(self) -> float: ...


class _Failed(Protocol):
    @property
    def skipped(self) -> bool: ...


class _Outcome(Protocol):
    # Structural: bench/forward.py's Outcome, without importing the harness.
    @property
    def failures(self) -> Sequence[tuple[tuple[str, int], _Failed]]: ...

    def medians(self) -> Mapping[tuple[str, int], _Measured]: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def cells_from_outcome(
    outcome: _Outcome, modes: Iterable[_Named], streams: Sequence[int]
) -> list[Cell]:
    """The cells of forward.py's ``table()``, from the measurements themselves."""
    medians = outcome.medians()
    status = {cell: "SKIPPED" if f.skipped else "FAILED" for cell, f in outcome.failures}
    cells = []
    for mode in modes:
        for n in streams:
            m = medians.get((mode.name, n))
            if m is None:
                cells.append(Cell(mode.name, n, None, status=status.get((mode.name, n), "not run")))
                continue
            ref = medians.get((REFERENCE, n))
            ratio = m.gbps / ref.gbps if ref is not None and ref.gbps > 0 else None
            cells.append(Cell(mode.name, n, m.gbps, ratio))
    return cells


class TableError(ValueError):
    """The Markdown has no results table this module can read."""


def _row(line: str) -> list[str]:
    return [part.strip() for part in line.strip().strip("|").split("|")]


def _ratio_value(text: str) -> float | None:
    if text.endswith("x"):
        try:
            return float(text[:-1])
        except ValueError:
            pass
    return None


def parse_table(markdown: str) -> list[Cell]:
    """The cells of the results table in *markdown* as forward.py writes it.

    Raises:
        TableError: no line starts a table with mode, streams and Gbit/s columns
            and a ratio column against the C offload forwarder.
    """
    lines = markdown.splitlines()
    wanted = [MODE_COLUMN, STREAMS_COLUMN, GBPS_COLUMN]
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("|") and _row(line)[:3] == wanted),
        None,
    )
    if start is None:
        raise TableError(
            "no results table found: expected a Markdown table whose header starts "
            f"'| {MODE_COLUMN} | {STREAMS_COLUMN} | {GBPS_COLUMN} |' (bench/forward.py's output)"
        )
    header = _row(lines[start])
    ratio_at = next((header.index(c) for c in RATIO_COLUMNS if c in header), None)
    if ratio_at is None:
        raise TableError(f"the results table has none of the columns {', '.join(RATIO_COLUMNS)}")
    cells = []
    # The line after the header is the |---| separator.
    for number, line in enumerate(lines[start + 2 :], start + 3):
        if not line.startswith("|"):
            break
        row = _row(line)
        if len(row) != len(header):
            raise TableError(f"line {number}: {len(row)} columns, the header has {len(header)}")
        mode, streams, gbps = row[0], row[1], row[2]
        try:
            n = int(streams)
        except ValueError:
            raise TableError(f"line {number}: streams {streams!r} is not a number") from None
        try:
            cells.append(Cell(mode, n, float(gbps), _ratio_value(row[ratio_at])))
        except ValueError:
            cells.append(Cell(mode, n, None, status=gbps))
    return cells


def subtitle(markdown: str) -> str:
    """When and where the results were measured: the report's first line of text."""
    for line in markdown.splitlines():
        if line and not line.startswith("#"):
            # "2026-11-29 00:51:00, Linux 6.18, 2 CPUs, Python 3.11.7; iperf3 ..."
            return line.split(";")[0]
    return ""


# -- output -------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def escape(text: str) -> str:
    """*text* as XML character data or attribute value (double-quoted)."""
    text = _NOT_XML.sub("\ufffd", text)
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _num(value: float) -> str:
    # Fixed precision keeps the output byte-identical and free of float noise.
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _tick(value: float) -> str:
    # Ticks are multiples of a round step, which may be finer than 0.01.
    return f"{round(value, 9):g}"


def _fmt_gbps(value: float) -> str:
    return f"{value:.2f}"


def nice_step(maximum: float, ticks: int = TARGET_TICKS) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about *ticks* ticks."""
    if maximum <= 0 or not math.isfinite(maximum):
        return 1.0
    raw = maximum / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= factor * power:
            return factor * power
    return 10.0 * power  # not reached: raw < 10 * power


def axis(maximum: float) -> tuple[float, list[float]]:
    """The axis' end and its tick values, from 0 to a whole number of steps >= *maximum*."""
    step = nice_step(maximum)
    count = max(1, math.ceil(maximum / step - 1e-9))
    return count * step, [i * step for i in range(count + 1)]


def _bar_label(cell: Cell) -> str:
    assert cell.gbps is not None
    text = _fmt_gbps(cell.gbps)
    if cell.mode == REFERENCE:
        return f"{text} (reference)"
    if cell.ratio is None:
        return text
    return f"{text} · {cell.ratio:.2f}x C"


def _streams_text(n: int) -> str:
    return f"{n} stream" if n == 1 else f"{n} streams"


def _legend_advance(text: str) -> float:
    return 19 + len(text) * LABEL_CHAR + 14


def _legend_lines(texts: Sequence[str]) -> int:
    """How many lines the legend takes (render_svg wraps it the same way)."""
    lines, x = 1, float(MARGIN)
    for text in texts:
        if x > MARGIN and x + _legend_advance(text) > WIDTH - MARGIN:
            lines, x = lines + 1, float(MARGIN)
        x += _legend_advance(text)
    return lines


def render_svg(cells: Sequence[Cell], title: str = "", note: str = "") -> str:
    """The chart of *cells* (grouped by mode in their order) as an SVG document."""
    modes = list(dict.fromkeys(c.mode for c in cells))
    stream_counts = sorted({c.streams for c in cells})
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(stream_counts)}
    measured = [c.gbps for c in cells if c.gbps is not None]
    end, ticks = axis(max(measured, default=0.0))

    longest_mode = max((len(m) for m in modes), default=0)
    label_width = min(MODE_LABEL_MAX, longest_mode * LABEL_CHAR + 8)
    streams_width = max((len(_streams_text(n)) for n in stream_counts), default=0) * VALUE_CHAR
    value_width = max(
        (len(_bar_label(c)) * VALUE_CHAR for c in cells if c.gbps is not None), default=0.0
    )
    plot_left = MARGIN + label_width + 8 + streams_width + 6
    plot_right = WIDTH - MARGIN - value_width - 6
    plot_width = plot_right - plot_left
    scale = plot_width / end

    legend = [(colour[n], "", f"{_streams_text(n)} (iperf3 -P {n})") for n in stream_counts]
    if stream_counts:
        hatched = f' stroke="{HATCH}" stroke-width="1"'
        legend.append(("url(#ref0)", hatched, f"{REFERENCE}: the C forwarder, the reference"))
    legend_top = MARGIN + TITLE_HEIGHT
    rows = len(cells)
    plot_top = legend_top + _legend_lines([text for _, _, text in legend]) * LEGEND_LINE + 8
    plot_height = rows * (BAR_HEIGHT + BAR_GAP) + len(modes) * GROUP_GAP
    height = plot_top + plot_height + AXIS_HEIGHT + MARGIN

    title = title or f"Forwarding throughput (median Gbit/s, ratio to {REFERENCE})"
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{_num(height)}" '
        f'viewBox="0 0 {WIDTH} {_num(height)}" font-family="sans-serif" font-size="{FONT}" '
        f'fill="{TEXT}" role="img">',
        f"<title>{escape(title)}</title>",
        "<defs>",
    ]
    # The reference's bars: their stream colour under dark diagonal stripes.
    for i, n in enumerate(stream_counts):
        out.append(
            f'<pattern id="ref{i}" width="6" height="6" patternUnits="userSpaceOnUse" '
            f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{colour[n]}"/>'
            f'<rect width="2.5" height="6" fill="{HATCH}" fill-opacity="0.55"/></pattern>'
        )
    out += [
        "</defs>",
        f'<rect width="{WIDTH}" height="{_num(height)}" fill="#ffffff"/>',
        f'<text x="{MARGIN}" y="{MARGIN + 14}" font-size="15" font-weight="bold">'
        f"{escape(title)}</text>",
    ]
    if note:
        out.append(
            f'<text x="{MARGIN}" y="{MARGIN + 32}" font-size="{SMALL}" fill="{MUTED}">'
            f"{escape(note)}</text>"
        )

    # Legend: one swatch per stream count, then the reference's hatching,
    # wrapped onto as many lines as the width needs.
    x, y = float(MARGIN), float(legend_top)
    for fill, stroke, text in legend:
        advance = _legend_advance(text)
        if x > MARGIN and x + advance > WIDTH - MARGIN:
            x, y = float(MARGIN), y + LEGEND_LINE
        out.append(
            f'<rect class="swatch" x="{_num(x)}" y="{_num(y)}" width="14" '
            f'height="{BAR_HEIGHT}" fill="{fill}"{stroke}/>'
        )
        out.append(f'<text x="{_num(x + 19)}" y="{_num(y + BAR_HEIGHT - 3)}">{escape(text)}</text>')
        x += advance

    # Grid lines and the axis under the plot.
    axis_y = plot_top + plot_height
    for value in ticks:
        tx = plot_left + value * scale
        out.append(
            f'<line class="grid" x1="{_num(tx)}" y1="{plot_top}" x2="{_num(tx)}" '
            f'y2="{_num(axis_y)}" stroke="{GRID}" stroke-width="1"/>'
        )
        out.append(
            f'<text class="tick" data-value="{_tick(value)}" x="{_num(tx)}" '
            f'y="{_num(axis_y + 16)}" text-anchor="middle" font-size="{SMALL}">'
            f"{_tick(value)}</text>"
        )
    out.append(
        f'<line class="axis" x1="{_num(plot_left)}" y1="{_num(axis_y)}" x2="{_num(plot_right)}" '
        f'y2="{_num(axis_y)}" stroke="{TEXT}" stroke-width="1"/>'
    )
    out.append(
        f'<text x="{_num(plot_left + plot_width / 2)}" y="{_num(axis_y + 34)}" '
        f'text-anchor="middle" font-size="{SMALL}">Gbit/s (iperf3 TCP through the forwarder)</text>'
    )

    # The groups.
    y = float(plot_top)
    for mode in modes:
        group = [c for c in cells if c.mode == mode]
        group_height = len(group) * (BAR_HEIGHT + BAR_GAP) - BAR_GAP
        reference = mode == REFERENCE
        weight = ' font-weight="bold"' if reference else ""
        shown = (
            mode
            if len(mode) * LABEL_CHAR <= MODE_LABEL_MAX
            else mode[: int(MODE_LABEL_MAX / LABEL_CHAR) - 2] + "…"
        )
        out.append(
            f'<text class="mode" x="{_num(MARGIN + label_width)}" '
            f'y="{_num(y + group_height / 2 + 5)}" text-anchor="end"{weight}>'
            f"{escape(shown)}</text>"
        )
        for c in group:
            mid = y + BAR_HEIGHT / 2 + 4.5
            out.append(
                f'<text x="{_num(plot_left - 6)}" y="{_num(mid)}" text-anchor="end" '
                f'font-size="{SMALL}" fill="{MUTED}">{_streams_text(c.streams)}</text>'
            )
            if c.gbps is None:
                out.append(
                    f'<text class="na" x="{_num(plot_left + 4)}" y="{_num(mid)}" '
                    f'font-size="{SMALL}" font-style="italic" fill="{MUTED}">'
                    f"n/a ({escape(c.status.lower() or 'not measured')})</text>"
                )
            else:
                width = c.gbps * scale
                index = stream_counts.index(c.streams)
                fill = f"url(#ref{index})" if reference else colour[c.streams]
                stroke = f' stroke="{HATCH}" stroke-width="1"' if reference else ""
                out.append(
                    f'<rect class="bar" data-mode="{escape(c.mode)}" data-streams="{c.streams}" '
                    f'data-gbps="{_fmt_gbps(c.gbps)}" x="{_num(plot_left)}" y="{_num(y)}" '
                    f'width="{_num(width)}" height="{BAR_HEIGHT}" fill="{fill}"{stroke}/>'
                )
                out.append(
                    f'<text class="value" x="{_num(plot_left + width + 5)}" y="{_num(mid)}" '
                    f'font-size="{SMALL}">{escape(_bar_label(c))}</text>'
                )
            y += BAR_HEIGHT + BAR_GAP
        y += GROUP_GAP
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- command line -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw bench/forward.py's results as SVG.")
    parser.add_argument("results", type=Path, help="Markdown results file (bench/results.md)")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="SVG file (default: RESULTS with .svg)"
    )
    args = parser.parse_args(argv)
    try:
        markdown = args.results.read_text(encoding="utf-8")
        cells = parse_table(markdown)
    except (OSError, TableError) as exc:
        print(f"{args.results}: {exc}", file=sys.stderr)
        return 1
    output = args.output or args.results.with_suffix(".svg")
    output.write_text(render_svg(cells, note=subtitle(markdown)), encoding="utf-8")
    print(f"chart written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
