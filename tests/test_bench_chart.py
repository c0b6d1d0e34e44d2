"""bench/chart.py: the benchmark's SVG bar chart and its Markdown table parser.

Fast and root-free: nothing here runs the benchmark.  The Markdown side is
checked against bench/forward.py's own ``table()``, so the parser reads what
the harness really writes.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tun.platform.linux import netns as _netns

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

# The benchmark scripts are not a package: import them as forward.py runs them.
import chart  # noqa: E402
import forward  # noqa: E402

SVG: str = "{http://www.w3.org/2000/svg}"
REF = chart.REFERENCE
STATUSES = ("FAILED", "SKIPPED", "not run")

# Mode names as users could spell them, including the XML specials, but
# without what would break a Markdown table row (| and line breaks) or be
# stripped from a cell (outer blanks).  Short enough never to be shortened.
mode_names = st.text(
    alphabet=st.sampled_from("abcxyz019-_. <&>\"'éλ"), min_size=1, max_size=18
).filter(lambda s: s == s.strip())
gbps_values = st.integers(min_value=0, max_value=100_000).map(lambda v: v / 100)


@st.composite
def tables(draw: Any) -> list[chart.Cell]:
    """Cells of a results table: every mode at every stream count, some n/a."""
    names = draw(st.lists(mode_names, min_size=1, max_size=8, unique=True))
    if draw(st.booleans()):
        names.insert(draw(st.integers(0, len(names))), REF)
    names = list(dict.fromkeys(names))
    streams = sorted(draw(st.sets(st.integers(1, 128), min_size=1, max_size=4)))
    cells = []
    for name in names:
        for n in streams:
            if draw(st.integers(0, 4)) == 0:
                cells.append(chart.Cell(name, n, None, status=draw(st.sampled_from(STATUSES))))
            else:
                ratio = draw(st.none() | st.integers(0, 2000).map(lambda v: v / 100))
                cells.append(chart.Cell(name, n, draw(gbps_values), ratio))
    return cells


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg.encode("utf-8"))


def _by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if e.get("class") == cls]


def _scale(root: ET.Element) -> tuple[float, float, float]:
    """(x of 0, px per Gbit/s, axis end) read from the axis' tick labels."""
    ticks = _by_class(root, "text", "tick")
    values = [float(t.get("data-value", "nan")) for t in ticks]
    xs = [float(t.get("x", "nan")) for t in ticks]
    assert values[0] == 0 and len(values) >= 2
    assert values == sorted(values)
    return xs[0], (xs[-1] - xs[0]) / values[-1], values[-1]


@settings(max_examples=60, deadline=None)
@given(tables())
def test_one_bar_per_measured_cell(cells: list[chart.Cell]) -> None:
    svg = chart.render_svg(cells, note="note <&>")
    root = _parse(svg)
    bars = _by_class(root, "rect", "bar")
    measured = [c for c in cells if c.gbps is not None]
    # Exactly the measured cells, in order, each once; n/a cells are not drawn.
    assert [(b.get("data-mode"), int(b.get("data-streams", "0"))) for b in bars] == [
        (c.mode, c.streams) for c in measured
    ]
    assert [float(b.get("data-gbps", "nan")) for b in bars] == [c.gbps for c in measured]
    na = _by_class(root, "text", "na")
    assert [t.text for t in na] == [f"n/a ({c.status.lower()})" for c in cells if c.gbps is None]
    # The reference's bars, and only those, are hatched.
    for bar, cell in zip(bars, measured, strict=True):
        assert bar.get("fill", "").startswith("url(#ref") == (cell.mode == REF)


@settings(max_examples=60, deadline=None)
@given(tables())
def test_bar_widths_follow_the_axis(cells: list[chart.Cell]) -> None:
    root = _parse(chart.render_svg(cells))
    x0, per_gbps, end = _scale(root)
    measured = [c for c in cells if c.gbps is not None]
    assert end >= max((c.gbps for c in measured if c.gbps is not None), default=0)
    # At most about TARGET_TICKS intervals: the axis is not stretched far
    # beyond the longest bar.
    assert len(_by_class(root, "text", "tick")) <= 2 * chart.TARGET_TICKS + 1
    # The ticks run exactly along the axis line, which stays inside the image.
    (line,) = _by_class(root, "line", "axis")
    assert float(line.get("x1", "nan")) == pytest.approx(x0, abs=0.006)
    assert float(line.get("x2", "nan")) == pytest.approx(x0 + per_gbps * end, abs=0.02)
    assert 100 <= x0 + per_gbps * end <= chart.WIDTH - chart.MARGIN
    for bar, cell in zip(_by_class(root, "rect", "bar"), measured, strict=True):
        assert cell.gbps is not None
        assert float(bar.get("x", "nan")) == pytest.approx(x0, abs=0.006)
        # Coordinates are written with two decimals.
        assert float(bar.get("width", "nan")) == pytest.approx(cell.gbps * per_gbps, abs=0.02)


@settings(max_examples=60, deadline=None)
@given(tables())
def test_labels_name_values_ratios_and_modes(cells: list[chart.Cell]) -> None:
    root = _parse(chart.render_svg(cells))
    values = [t.text for t in _by_class(root, "text", "value")]
    expected = []
    for c in cells:
        if c.gbps is None:
            continue
        if c.mode == REF:
            expected.append(f"{c.gbps:.2f} (reference)")
        elif c.ratio is None:
            expected.append(f"{c.gbps:.2f}")
        else:
            expected.append(f"{c.gbps:.2f} · {c.ratio:.2f}x C")
    assert values == expected
    # Every mode labels its group once, read back unescaped.
    assert [t.text for t in _by_class(root, "text", "mode")] == list(
        dict.fromkeys(c.mode for c in cells)
    )


@settings(max_examples=30, deadline=None)
@given(tables())
def test_same_cells_same_bytes(cells: list[chart.Cell]) -> None:
    first = chart.render_svg(cells, note="x")
    again = chart.render_svg([attrs.evolve(c) for c in cells], note="x")
    assert first.encode() == again.encode()


def test_markup_in_names_is_escaped() -> None:
    cells = [chart.Cell('<b a="1">&amp;</b>', 1, 2.0, 0.5), chart.Cell(REF, 1, 4.0, 1.0)]
    svg = chart.render_svg(cells, title="<t>", note="a & b")
    assert "<b " not in svg and "&amp;amp;" in svg and "&lt;t&gt;" in svg
    root = _parse(svg)
    assert [t.text for t in _by_class(root, "text", "mode")] == ['<b a="1">&amp;</b>', REF]
    # Characters XML cannot carry at all are replaced, the document still parses.
    _parse(chart.render_svg([chart.Cell("a\x00\x1b\ud800b", 1, 1.0)]))


def test_nothing_measured_draws_no_bar() -> None:
    cells = [chart.Cell("trio-raw", 1, None, status="FAILED"), chart.Cell(REF, 1, None, status="")]
    root = _parse(chart.render_svg(cells))
    assert _by_class(root, "rect", "bar") == []
    assert [t.text for t in _by_class(root, "text", "na")] == [
        "n/a (failed)",
        "n/a (not measured)",
    ]
    assert _scale(root)[2] == 1  # an axis all the same, 0 to 1


@pytest.mark.parametrize(
    ("maximum", "end"),
    [(23.43, 25), (18.5, 20), (1.09, 1.2), (0.0, 1), (100.0, 100), (0.013, 0.015), (7.0, 8)],
)
def test_axis_ends_on_a_round_step(maximum: float, end: float) -> None:
    got, ticks = chart.axis(maximum)
    assert got == pytest.approx(end)
    assert ticks[0] == 0 and ticks[-1] == pytest.approx(got)


# -- the Markdown side --------------------------------------------------------------


def _mode(name: str) -> forward.Mode:
    return forward.Mode(name, "a mode", "trio", True)


@st.composite
def outcomes(draw: Any) -> tuple[forward.Outcome, list[forward.Mode], list[int]]:
    names = draw(
        st.lists(mode_names, min_size=1, max_size=6, unique=True).map(
            lambda names: [*names, REF] if REF not in names else names
        )
    )
    streams = sorted(draw(st.sets(st.integers(1, 64), min_size=1, max_size=3)))
    outcome = forward.Outcome()
    for name in names:
        for n in streams:
            kind = draw(st.sampled_from(["measured", "measured", "failed", "skipped", "none"]))
            if kind == "measured":
                repeats = draw(st.lists(st.floats(0, 500, allow_nan=False), min_size=1, max_size=3))
                outcome.runs[(name, n)] = [
                    forward.Measurement(g, math.nan, math.nan, None, {}) for g in repeats
                ]
            elif kind != "none":
                failure = forward.Failure("why", skipped=kind == "skipped")
                outcome.failures.append(((name, n), failure))
    return outcome, [_mode(n) for n in names], streams


def _as_printed(cell: chart.Cell) -> chart.Cell:
    """*cell* as the table prints it: two decimals."""
    gbps = None if cell.gbps is None else float(f"{cell.gbps:.2f}")
    ratio = None if cell.ratio is None else float(f"{cell.ratio:.2f}")
    return chart.Cell(cell.mode, cell.streams, gbps, ratio, cell.status)


@settings(max_examples=80, deadline=None)
@given(outcomes())
def test_markdown_table_round_trips(case: tuple[Any, list[Any], list[int]]) -> None:
    outcome, modes, streams = case
    markdown = "# title\n\ntext\n\n" + "\n".join(forward.table(outcome, modes, streams)) + "\n\n"
    parsed = chart.parse_table(markdown)
    from_outcome = chart.cells_from_outcome(outcome, modes, streams)
    assert parsed == [_as_printed(c) for c in from_outcome]
    # Both ways in draw the same chart when the numbers agree to the printed digits.
    assert chart.render_svg(parsed) == chart.render_svg([_as_printed(c) for c in from_outcome])


def test_committed_results_parse() -> None:
    cells = chart.parse_table((BENCH / "results.md").read_text(encoding="utf-8"))
    by_cell = {(c.mode, c.streams): c for c in cells}
    assert len(by_cell) == len(cells) > 0
    for (mode, n), cell in by_cell.items():
        reference = by_cell[(REF, n)]
        if cell.gbps is not None and reference.gbps:
            assert cell.ratio == pytest.approx(cell.gbps / reference.gbps, abs=0.011), (mode, n)


def test_parse_reports_what_is_wrong() -> None:
    with pytest.raises(chart.TableError, match="no results table"):
        chart.parse_table("# nothing\n\n| a | b |\n| - | - |\n")
    with pytest.raises(chart.TableError, match="vs C passthrough"):
        chart.parse_table("| mode | streams | Gbit/s |\n| - | - | - |\n| a | 1 | 2.00 |\n")
    header = "| mode | streams | Gbit/s | vs C passthrough |\n| - | - | - | - |\n"
    with pytest.raises(chart.TableError, match="line 3: streams 'x'"):
        chart.parse_table(header + "| a | x | 2.00 | - |\n")
    with pytest.raises(chart.TableError, match="line 4: 3 columns"):
        chart.parse_table(header + "| a | 1 | 2.00 | - |\n| a | 4 | 2.00 |\n")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results.md"
    cells = [chart.Cell("trio-raw", 1, 15.96, 0.86), chart.Cell(REF, 1, 18.5, 1.0)]
    outcome = forward.Outcome()
    for c in cells:
        assert c.gbps is not None
        outcome.runs[(c.mode, c.streams)] = [
            forward.Measurement(c.gbps, 50.0, 1.0, None, {}),
        ]
    lines = forward.table(outcome, [_mode("trio-raw"), _mode(REF)], [1])
    results.write_text("# t\n\n2026-01-01 00:00:00, Linux 6; more\n\n" + "\n".join(lines) + "\n")
    assert chart.main([str(results)]) == 0
    svg = (tmp_path / "results.svg").read_text(encoding="utf-8")
    assert svg == chart.render_svg(cells, note="2026-01-01 00:00:00, Linux 6")
    assert chart.main([str(results), "-o", str(tmp_path / "x.svg")]) == 0
    assert (tmp_path / "x.svg").read_text(encoding="utf-8") == svg

    (tmp_path / "empty.md").write_text("# no table\n")
    assert chart.main([str(tmp_path / "empty.md")]) == 1
    assert "no results table found" in capsys.readouterr().err
    assert not (tmp_path / "empty.svg").exists()


@pytest.mark.parametrize("explicit", [False, True])
def test_forward_main_writes_the_chart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, explicit: bool
) -> None:
    """forward.py's main() draws the chart from what it measured, after the Markdown."""
    measured = {("trio-raw", 1): 15.96, ("c-offload", 1): 18.5}

    def run_all(modes: Any, args: Any, skipped: Any) -> forward.Outcome:
        outcome = forward.Outcome()
        for cell, gbps in measured.items():
            outcome.runs[cell] = [forward.Measurement(gbps, 50.0, 1.0, None, {})]
        outcome.failures.append((("pytun", 1), forward.Failure("no pytun", skipped=True)))
        return outcome

    # Everything that would touch the system is replaced: no namespace, no
    # signal handler, no benchmark.
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(_netns, "unshare_net", lambda: None)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.setattr(forward, "_remove_stale_namespaces", lambda: None)
    monkeypatch.setattr(forward, "preflight", lambda modes: {})
    monkeypatch.setattr(forward, "run_all", run_all)
    results = tmp_path / "out.md"
    argv = ["--modes", "trio-raw", "c-offload", "pytun", "--streams", "1"]
    argv += ["--output", str(results)]
    svg_path = tmp_path / "elsewhere.svg" if explicit else tmp_path / "out.svg"
    if explicit:
        argv += ["--chart", str(svg_path)]
    assert forward.main(argv) == 0
    svg = svg_path.read_text(encoding="utf-8")
    bars = _by_class(_parse(svg), "rect", "bar")
    assert [(b.get("data-mode"), b.get("data-gbps")) for b in bars] == [
        ("trio-raw", "15.96"),
        ("c-offload", "18.50"),
    ]
    assert [t.text for t in _by_class(_parse(svg), "text", "na")] == ["n/a (skipped)"]
    # The same chart as from the Markdown it wrote (the numbers have two decimals).
    markdown = results.read_text(encoding="utf-8")
    assert svg == chart.render_svg(chart.parse_table(markdown), note=chart.subtitle(markdown))
