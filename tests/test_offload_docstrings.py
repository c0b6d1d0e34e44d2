"""Every public trio_tun.offload function and class explains itself under help().

With the compiled speedups the public names are C functions (or thin
wrappers around them), whose docstrings live in _speedups.c; those once said
only "See trio_tun.offload.checksum.", which is what help() showed users.
Both implementations are checked: the pure-Python reference and the speedups.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pydoc
import subprocess
import sys
import textwrap
import types
from typing import Any

import pytest

import trio_tun.offload
from trio_tun.offload import reference

try:
    # By module path: with TRIO_TUN_PURE_PYTHON=1 the package's own _accel
    # attribute is None, yet the speedups are there to check.
    _accel = importlib.import_module("trio_tun.offload._accel")
    _speedups = importlib.import_module("trio_tun.offload._speedups")
except ImportError:  # not built: only the reference is checked
    _accel = None  # type: ignore[assignment]
    _speedups = None  # type: ignore[assignment]

needs_speedups = pytest.mark.skipif(_speedups is None, reason="_speedups extension not built")

# The public callables and classes (constants and the reference module aside).
PUBLIC: tuple[str, ...] = tuple(
    name
    for name in trio_tun.offload.__all__
    if callable(getattr(trio_tun.offload, name)) and name != "implementation"
)
GRO_MEMBERS = ("add", "flush", "pending_packets", "pending_buffers")
MIN_DESCRIPTION = 30  # characters: a sentence, not a cross-reference


def _namespaces() -> list[Any]:
    spaces = [pytest.param(_exported(reference), id="python")]
    if _accel is not None:
        spaces.append(pytest.param(_exported(_accel), id="speedups"))
    return spaces


def _exported(implementation: types.ModuleType) -> types.SimpleNamespace:
    """What trio_tun.offload exports with *implementation* in use: its names,
    the rest (the same either way) from the package."""
    return types.SimpleNamespace(
        **{name: getattr(implementation, name, getattr(trio_tun.offload, name)) for name in PUBLIC}
    )


def _check_description(what: str, doc: str | None) -> None:
    assert doc, f"{what} has no docstring"
    first = inspect.cleandoc(doc).splitlines()[0]
    assert not first.startswith("See"), f"{what}: {first!r} is a pointer, not a description"
    assert len(inspect.cleandoc(doc)) >= MIN_DESCRIPTION, f"{what}: {doc!r} is too short"


def test_public_names_are_covered() -> None:
    assert set(PUBLIC) >= {
        "checksum",
        "ones_complement_sum",
        "split",
        "split_fields",
        "split_with_header",
        "coalesce",
        "split_gro",
        "gso_runs",
        "GroTable",
    }


@pytest.mark.parametrize("space", _namespaces())
@pytest.mark.parametrize("name", PUBLIC)
def test_docstring_describes(space: Any, name: str) -> None:
    obj = getattr(space, name)
    # __doc__ itself, not an inherited one: that is what C functions have.
    _check_description(name, obj.__doc__)
    if name == "GroTable":
        for member in GRO_MEMBERS:
            _check_description(f"GroTable.{member}", getattr(obj, member).__doc__)


@pytest.mark.parametrize("space", _namespaces())
@pytest.mark.parametrize("name", PUBLIC)
def test_signature_matches_the_reference(space: Any, name: str) -> None:
    """help() shows a signature with the reference's parameter names."""
    obj = getattr(space, name)
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return
    expected = list(inspect.signature(getattr(trio_tun.offload.reference, name, obj)).parameters)
    assert list(inspect.signature(obj).parameters) == expected


@needs_speedups
def test_compiled_functions_carry_signatures_and_descriptions() -> None:
    """The C method table itself, including what _accel wraps."""
    public = {
        "ones_complement_sum": ["data", "initial"],
        "checksum": ["data", "initial"],
        "split": ["flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset"],
        "split_with_header": ["buf"],
        "coalesce": ["packets", "uso", "max_size", "allow_short_last"],
        "split_gro": ["buffer", "gso_size"],
        "gso_runs": ["datagrams", "max_segments", "max_bytes"],
        "batch_sizes": ["items"],
        "gro_parse": ["packet"],
        "gro_build": ["first", "ihl", "hlen", "gso_size", "psh", "payloads"],
    }
    for name, params in public.items():
        func = getattr(_speedups, name)
        _check_description(f"_speedups.{name}", func.__doc__)
        assert list(inspect.signature(func).parameters)[: len(params)] == params, name
    table = _speedups.GroTable
    _check_description("_speedups.GroTable", table.__doc__)
    for member in GRO_MEMBERS:
        _check_description(f"_speedups.GroTable.{member}", getattr(table, member).__doc__)
    assert list(inspect.signature(table().add).parameters) == ["packet"]
    assert list(inspect.signature(table().flush).parameters) == []


@pytest.mark.parametrize("pure", ["0", "1"], ids=["speedups", "python"])
def test_help_output(pure: str) -> None:
    """What a user typing help(trio_tun.offload.<name>) reads, in a fresh interpreter."""
    if pure == "0" and _speedups is None:
        pytest.skip("_speedups extension not built")
    script = textwrap.dedent(
        f"""
        import pydoc, trio_tun.offload as o
        assert o.implementation == {"python" if pure == "1" else "speedups"!r}
        for name in {PUBLIC!r}:
            obj = getattr(o, name)
            text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
            print("=== " + name + " " + obj.__name__)
            print(text)
        """
    )
    env = {**os.environ, "TRIO_TUN_PURE_PYTHON": pure}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    pages, defined = {}, {}
    for page in out.split("=== ")[1:]:
        title, pages[title.split()[0]] = page.split("\n", 1)
        defined[title.split()[0]] = title.split()[1]
    assert set(pages) == set(PUBLIC)
    for name, page in pages.items():
        if defined[name] != name:
            # A C function exported under another name (split_fields is
            # _speedups.split): its page must say so.
            assert f"trio_tun.offload.{name}" in page, page
        assert "See trio_tun" not in page and "See :func:" not in page, (name, page)
        expected = getattr(trio_tun.offload, name)
        if not (inspect.isclass(expected) and issubclass(expected, BaseException)):
            params = inspect.signature(getattr(reference, name, expected)).parameters
            # The first parameter shows in the signature line under the name.
            first = next(iter(params))
            assert f"{defined[name]}(" in page and first in page, (name, page)
    # And the description a user sees is the docstring's first line.
    checksum_doc = inspect.cleandoc(
        (_speedups.checksum if pure == "0" else reference.checksum).__doc__ or ""
    )
    assert checksum_doc.splitlines()[0] in pages["checksum"]


def test_render_doc_in_process() -> None:
    # The same, for whatever implementation this process uses.
    text = pydoc.render_doc(trio_tun.offload.checksum, renderer=pydoc.plaintext)  # type: ignore[attr-defined]
    assert "checksum(data" in text and "initial" in text
    assert "See trio_tun" not in text
    first = inspect.cleandoc(trio_tun.offload.checksum.__doc__ or "").splitlines()[0]
    assert first in text and not first.startswith("See")
