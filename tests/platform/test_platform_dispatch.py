"""Backend selection, option refusals, ``info`` reporting, and importing on Windows."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import trio_tun
from trio_tun import Layer, TunConfig, _info
from trio_tun import platform as _platform
from trio_tun._open import open_device, select_backend


def open_on(
    platform: str, layer: Layer = Layer.L3, name: str | None = None, **options: Any
) -> contextlib.AbstractAsyncContextManager[Any]:
    """What ``open_tun``/``open_tap`` do on *platform* before the block is entered:
    build the config, pick the backend, let it refuse, prepare the context manager."""
    # open_tun's default offload is "auto"; open_tap passes False.
    options.setdefault("offload", "auto" if layer is Layer.L3 else False)
    config = TunConfig(layer=layer, name=name, **options)
    backend = select_backend(platform)
    backend.check(config)
    return open_device(backend, config)


def test_backend_names() -> None:
    assert _platform.backend_name("linux") == "linux"
    assert _platform.backend_name("darwin") == "darwin"
    assert _platform.backend_name("win32") == "windows"
    assert _platform.backend_name("freebsd14") == "freebsd"
    assert _platform.backend_name("openbsd7") == "openbsd"
    assert _platform.backend_name("netbsd10") == "netbsd"
    assert _platform.backend_name("ios") == "ios"
    assert _platform.backend_name("android") == "android"
    # The running system's backend (what OTHER_PLATFORM used to say: Linux or not).
    assert _platform.backend_name() == _platform.backend_name(sys.platform)
    assert (_platform.backend_name() != "linux") is (sys.platform != "linux")
    assert select_backend().name == _platform.backend_name()
    for platform, expected in (
        ("linux", "linux"),
        ("darwin", "darwin"),
        ("win32", "windows"),
        ("freebsd14", "freebsd"),
        ("openbsd7", "openbsd"),
        ("netbsd10", "netbsd"),
    ):
        assert select_backend(platform).name == expected
    for platform in ("ios", "android"):
        backend = select_backend(platform)
        assert isinstance(backend, _platform.FdOnlyBackend) and backend.name == platform


@pytest.mark.parametrize("platform", ["ios", "android", "emscripten"])
def test_no_device_api_points_to_from_fd(platform: str) -> None:
    with pytest.raises(NotImplementedError, match="from_fd"):
        open_on(platform)


@pytest.mark.parametrize("platform", ["darwin", "freebsd", "openbsd", "netbsd", "win32"])
def test_linux_only_options_are_refused_before_any_call(platform: str) -> None:
    name = _platform.pretty(_platform.backend_name(platform))
    for option, value, pattern in (
        ("queues", 4, "multi-queue"),
        ("netns", 3, "namespaces"),
        ("owner", 0, "owner"),
        ("group", 0, "owner"),
        ("packet_info", True, "packet_info"),
    ):
        with pytest.raises(NotImplementedError, match=f"{pattern}.*{name}"):
            open_on(platform, **{option: value})
    with pytest.raises(trio_tun.OffloadUnavailableError, match="Linux-only"):
        open_on(platform, offload=True)
    # Configuration mistakes are ValueErrors, as on Linux.
    with pytest.raises(ValueError, match="bad address"):
        open_on(platform, addresses=["nonsense"])
    with pytest.raises(ValueError, match="queues"):
        open_on(platform, queues=0)


def test_tap_where_the_platform_has_it() -> None:
    for platform in ("darwin", "win32"):
        with pytest.raises(NotImplementedError, match="TAP"):
            open_on(platform, Layer.L2)
    for platform in ("freebsd", "openbsd", "netbsd"):
        open_on(platform, Layer.L2)  # only checked and prepared: nothing runs until entered
        with pytest.raises(NotImplementedError, match="mac="):
            open_on(platform, Layer.L2, mac="02:00:00:00:00:01")


def test_describe() -> None:
    lines = _platform.describe("darwin")
    assert lines[0].startswith("backend: darwin (utun")
    assert lines[1] == ("supports: TUN yes, TAP no, offload no, multi-queue no, persist no")
    assert "seam" in lines[2]
    assert "TAP yes" in _platform.describe("freebsd13")[1]
    assert "wintun" in _platform.describe("win32")[0]
    assert "real kernel" in _platform.describe("linux")[2]
    (line,) = _platform.describe("ios")
    assert "from_fd" in line and "header='af4'" in line


def test_info_on_another_platform(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_platform, "backend_name", lambda platform=None: "windows")
    monkeypatch.setattr(_info, "_probe_other", lambda backend: ["wintun: probed"])
    assert _info.main() == 0
    out = capsys.readouterr().out
    assert "backend: windows (wintun.dll" in out
    assert "supports: TUN yes, TAP no" in out
    assert "wintun: probed" in out


def test_info_probe_reports_a_missing_wintun(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _info._probe_other("windows")  # off Windows the DLL can never load
    assert lines[0].startswith("wintun: unavailable")
    assert "wintun.net" in lines[0]


def test_package_imports_on_windows() -> None:
    """``import trio_tun`` works where there is no fcntl and sys.platform is win32."""
    script = textwrap.dedent(
        """
        import sys
        import anyio, attrs, sniffio, trio, trio.lowlevel  # the real ones, imported first
        sys.modules["fcntl"] = None  # Windows has no fcntl
        sys.platform = "win32"
        import trio_tun
        import trio_tun.platform.windows as windows
        from trio_tun import Layer, platform
        from trio_tun._framing import PlainFraming
        from trio_tun._open import select_backend
        from trio_tun._stream import make_stream
        from trio_tun.platform.linux import tun
        assert platform.backend_name() == "windows"
        assert isinstance(select_backend(), windows.WindowsBackend)

        class Api:  # just enough of wintun.dll for a port to close
            def end_session(self, session): pass
            def close_adapter(self, adapter): pass

        # A wintun session is served by the very same TunStream as every other system.
        port = windows.WintunPort(Api(), None, adapter=1, session=2, read_event=3)
        stream = make_stream(Layer.L3, port, PlainFraming())
        assert type(stream) is trio_tun.TunStream and stream.fileno() == -1
        stream.close()
        assert stream.closed
        try:
            tun.open_tun_file()
        except OSError:
            pass
        print("imported")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"
