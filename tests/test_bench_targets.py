"""bench/forward.py's target checks: which stream counts a target covers, and
the round-by-round ratios printed next to each verdict.

Fast and root-free: the outcomes are made up, nothing runs the benchmark.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

# The benchmark scripts are not a package: import them as forward.py runs them.
import forward  # noqa: E402

OURS, REF = "threads-offload", "c-offload"


def _outcome(runs: dict[tuple[str, int], dict[int, float]]) -> forward.Outcome:
    """Runs given as {cell: {round: Gbit/s}}, appended in round order."""
    outcome = forward.Outcome()
    for cell, by_round in runs.items():
        outcome.runs[cell] = [
            forward.Measurement(gbps, math.nan, math.nan, None, {}, repeat=r)
            for r, gbps in sorted(by_round.items())
        ]
    return outcome


def _checks(outcome: forward.Outcome, streams: list[int]) -> list[str]:
    modes = [forward.MODES[OURS], forward.MODES[REF]]
    return forward.target_checks(outcome, modes, streams)


def test_each_stream_count_gets_its_own_minimum() -> None:
    # 0.85x: under the one-stream target (0.9x), over the four-stream one (0.8x).
    outcome = _outcome(
        {(OURS, n): {1: 8.5} for n in (1, 4)} | {(REF, n): {1: 10.0} for n in (1, 4)}
    )
    lines = _checks(outcome, [1, 4])
    assert lines == [
        f"- {OURS} >= 0.9x {REF}, 1 stream(s): MISS (0.85x)",
        f"- {OURS} >= 0.8x {REF}, 4 stream(s): PASS (0.85x)",
    ]


def test_rounds_pair_with_the_reference_of_the_same_round() -> None:
    # The reference drifts (10, 20, 10 Gbit/s); ours follows it at 0.9x, 0.9x
    # and 0.95x.  Medians alone pair 9.5 with 10 (0.95x).
    outcome = _outcome(
        {
            (OURS, 1): {1: 9.0, 2: 18.0, 3: 9.5},
            (REF, 1): {1: 10.0, 2: 20.0, 3: 10.0},
        }
    )
    assert forward.round_ratios(outcome, OURS, REF, 1) == [0.9, 0.9, 0.95]
    (line,) = _checks(outcome, [1])
    assert line == (
        f"- {OURS} >= 0.9x {REF}, 1 stream(s): PASS (0.95x); "
        "round by round 0.90x, 0.90x, 0.95x (median 0.90x)"
    )


def test_a_round_one_side_lost_is_left_out() -> None:
    outcome = _outcome(
        {
            (OURS, 1): {1: 9.0, 3: 9.5},
            (REF, 1): {1: 10.0, 2: 20.0, 3: 10.0},
        }
    )
    assert forward.round_ratios(outcome, OURS, REF, 1) == [0.9, 0.95]


def test_one_round_prints_no_round_by_round() -> None:
    outcome = _outcome({(OURS, 1): {1: 9.0}, (REF, 1): {1: 10.0}})
    (line,) = _checks(outcome, [1])
    assert "round by round" not in line


@given(
    st.dictionaries(st.integers(1, 9), st.floats(0.1, 100.0), min_size=1),
    st.dictionaries(st.integers(1, 9), st.floats(0.1, 100.0), min_size=1),
)
def test_round_ratios_cover_exactly_the_shared_rounds(
    ours: dict[int, float], theirs: dict[int, float]
) -> None:
    outcome = _outcome({(OURS, 1): ours, (REF, 1): theirs})
    shared = sorted(ours.keys() & theirs.keys())
    assert forward.round_ratios(outcome, OURS, REF, 1) == [ours[r] / theirs[r] for r in shared]
