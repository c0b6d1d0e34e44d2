"""Sphinx configuration for trio-tun (built with ``-W``: warnings are errors)."""

from __future__ import annotations

import enum
import importlib
import inspect
import os
import re
from typing import Any

# Document the pure-Python reference implementations of trio_tun.offload: the
# compiled speedups, when built, have the same names and signatures but their
# C functions carry no introspectable signature.
os.environ["TRIO_TUN_PURE_PYTHON"] = "1"

import attrs

import trio_tun

project = "trio-tun"
author = "trio-tun developers"
copyright = "trio-tun developers"
release = trio_tun.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

# No intersphinx: the docs must build without network access.
nitpicky = False
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
root_doc = "index"
default_role = "py:obj"

autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# furo: a maintained theme of the Python ecosystem whose content column is
# wide enough for the examples, with tables that scroll on their own instead
# of the whole page.
html_theme = "furo"
html_title = f"trio-tun {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]


# The public names live in private modules (trio_tun._stream, ...) and are
# re-exported from trio_tun (and trio_tun.offload); they are documented under
# the name users import.  Type hints and base classes still point at the
# defining module, so map those references to the documented names.
def _public_names() -> dict[str, str]:
    import trio_tun.offload
    import trio_tun.testing

    names: dict[str, str] = {}
    for package in (trio_tun, trio_tun.offload, trio_tun.testing):
        for name in package.__all__:
            obj = getattr(package, name)
            module = getattr(obj, "__module__", None)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and module:
                names[f"{module}.{obj.__qualname__}"] = f"{package.__name__}.{name}"
    return names


_PUBLIC = _public_names()
# Classes whose constructor is internal: document them without a signature.
_NO_SIGNATURE = {
    "trio_tun.PacketStream",
    "trio_tun.TunStream",
    "trio_tun.TapStream",
    "trio_tun.testing.MemoryTunStream",
    "trio_tun.pcap.CaptureStream",
}
# Implementation-detail base classes, not shown under "Bases:".
_HIDDEN_BASES = {"trio_tun._device.DeviceControlMixin"}


def _public_target(target: str) -> str | None:
    for private, public in _PUBLIC.items():
        if target == private or target.startswith(private + "."):
            return public + target[len(private) :]
    return None


def _resolve_private(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    public = _public_target(node.get("reftarget", ""))
    if public is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], public, node, contnode
    )


def _process_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    shown: list[Any] = []
    for base in bases:
        qualname = f"{getattr(base, '__module__', '')}.{getattr(base, '__qualname__', '')}"
        if qualname in _HIDDEN_BASES:
            continue
        public = _public_target(qualname)
        if public is not None:
            shown.append(f":py:class:`~{public}`")
        elif qualname.startswith(("trio.", "anyio.")):
            # Say which library: trio.ClosedResourceError, anyio.ClosedResourceError.
            shown.append(_library_name(base))
        else:
            shown.append(base)
    bases[:] = shown


def _library_name(base: Any) -> str:
    """reST naming *base* by its public path, e.g. ``anyio.abc.UnreliableObjectStream[bytes]``."""
    origin = getattr(base, "__origin__", base)
    name = origin.__qualname__
    for path in ("trio", "trio.abc", "anyio", "anyio.abc"):
        if getattr(importlib.import_module(path), name, None) is origin:
            break
    else:
        path = origin.__module__
    text = f":py:class:`{path}.{name}`"
    args = getattr(base, "__args__", None)
    if args:
        text += "\\ [" + ", ".join(getattr(a, "__qualname__", repr(a)) for a in args) + "]"
    return text


def _process_signature(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str, return_annotation: str
) -> tuple[str, str]:
    if what in ("class", "exception") and name in _NO_SIGNATURE:
        return "", return_annotation
    if signature and "attr_dict[" in signature and attrs.has(obj):
        # autodoc_preserve_defaults reads attrs' generated __init__, whose
        # defaults are spelled attr_dict['field'].default; show the values.
        fields = attrs.fields_dict(obj)
        signature = re.sub(
            r"attr_dict\['(\w+)'\]\.default",
            lambda m: _default_repr(fields[m.group(1)].default),
            signature,
        )
    return signature, return_annotation


def _default_repr(value: object) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_private)
    app.connect("autodoc-process-bases", _process_bases)
    app.connect("autodoc-process-signature", _process_signature)
