"""Every fuzz corpus entry, through every fuzz harness, in the normal test command.

The corpus (``tests/fuzz/corpus/<harness>/``) was seeded with real TUN reads
recorded from the kernel (``tests/fuzz/record_corpus.py``) and grows with the
inputs worth keeping that fuzzing finds.  Each harness reads any bytes in its
own format, so every file is replayed through every harness: a regression in
a parser shows up here without atheris.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.harnesses import CORPUS, HARNESSES

FILES = sorted(p for p in Path(CORPUS).rglob("*") if p.is_file())


def test_the_corpus_is_there_and_small() -> None:
    harness_dirs = {p.parent.name for p in FILES}
    # Every harness has seeds of its own.
    assert harness_dirs >= set(HARNESSES)
    assert sum(p.stat().st_size for p in FILES) < 2 * 1024 * 1024


@pytest.mark.parametrize("harness", sorted(HARNESSES))
def test_corpus_replays(harness: str) -> None:
    check = HARNESSES[harness]
    failures = []
    for path in FILES:
        try:
            check(path.read_bytes())
        except Exception as exc:  # collected, so one run names every failing file
            failures.append(f"{path.relative_to(CORPUS)}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures[:20])


def test_harnesses_reject_nothing_trivial() -> None:
    """Empty and tiny inputs are valid fuzzer inputs too."""
    for check in HARNESSES.values():
        for data in (b"", b"\0", b"\xff" * 3, bytes(10), bytes(11)):
            check(data)
