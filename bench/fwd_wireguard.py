"""WireGuard peers for bench/forward.py: examples/wireguard.py and wireguard-go, in any pairing.

Topology (made by the harness, inside its private namespaces)::

    client ns                                                            server ns
    iperf3 -c -> wg A 10.10.1.1/24 (MTU 1420)            wg B 10.10.2.1/24 (MTU 1420) -> iperf3 -s
                  |  peer process A                          peer process B  |
                  +-- UDP 10.99.0.1:51820 == veth underlay == UDP 10.99.0.2:51820 +

Each end namespace holds one end of the underlay veth pair (made by the
harness); this program starts one WireGuard peer in each, which creates its own
interface there (named by the harness: dev_a / dev_b), addressed like the
harness's TUN devices, with a route to the other end's network.  A peer is
either ``trio`` (examples/wireguard.py, our trio-tun peer, from a wg-quick
style file) or ``go`` (wireguard-go, configured with ``wg setconf`` and
addressed over netlink).  Both peers share a preshared key, so the handshake
and the data path are the same whatever the pairing.

wireguard-go's control socket (/var/run/wireguard/NAME.sock) lives in the
file system every namespace shares: the harness picks names no one else uses,
and this program removes the socket files of the peers it started.

This program is started once per measurement, by the harness, as the
"forwarder": it starts both peers (in the harness's process group, so a
killed launcher takes them along), waits until a ping crosses the tunnel (the
handshake is then done, outside the measured run), prints ``READY``, and on
SIGTERM stops both and prints one JSON line.  The harness sums the CPU time of
the whole process tree (launcher + both peers).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _fwdcommon

from trio_tun.platform.linux import netns as _netns
from trio_tun.testing import NetNamespace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "wireguard.py"
#: UDP port of both peers (each in its own namespace).
PORT = 51820
#: Inner MTU: 1500 on the underlay minus WireGuard's 60 bytes over IPv4 (wireguard-go's default).
MTU = 1420
#: wireguard-go's control sockets (shared by every namespace).
SOCKET_DIR = Path("/var/run/wireguard")
GO_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
#: How long a peer may take to come up, and the ping to cross the tunnel, in all.
READY_TIMEOUT = 12.0
#: Warm-up pings (one second each at most) before READY.
WARMUP_PINGS = 8
#: How long both stopped peers may take to exit, together.
STOP_TIMEOUT = 6.0
#: Exit status when a peer did not come up or died during the run.
PEER_FAILED = 3


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer-a", choices=["trio", "go"], required=True)
    parser.add_argument("--peer-b", choices=["trio", "go"], required=True)
    parser.add_argument("--underlay-a", required=True, help="peer A's underlay address")
    parser.add_argument("--underlay-b", required=True, help="peer B's underlay address")
    parser.add_argument("--inner-a", required=True, help="A's tunnel address/prefix")
    parser.add_argument("--inner-b", required=True, help="B's tunnel address/prefix")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="stop on our own after this long, whatever happens (default 600)",
    )


def _network(interface: str) -> str:
    return str(ipaddress.ip_interface(interface).network)


def _run(argv: list[str], stdin: str | None = None, ns: NetNamespace | None = None) -> str:
    fd = None if ns is None else ns.fileno()
    done = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        preexec_fn=None if fd is None else (lambda: _netns.setns(fd)),
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def _keypair() -> tuple[str, str]:
    """A base64 private and public key: ``wg genkey``/``wg pubkey``, else the example's helpers."""
    if shutil.which("wg") is not None:
        private = _run(["wg", "genkey"])
        return private, _run(["wg", "pubkey"], stdin=private + "\n")
    sys.path.insert(0, str(EXAMPLE.parent))
    from wgpeer import crypto

    key = crypto.generate_private_key()
    return crypto.encode_key(key), crypto.encode_key(crypto.public_key(key))


class Peer:
    """One WireGuard peer (a process we started) in one end namespace."""

    def __init__(
        self,
        side: str,
        kind: str,
        ns: NetNamespace,
        name: str,
        workdir: Path,
        *,
        private: str,
        peer_public: str,
        psk: str,
        inner: str,
        peer_inner: str,
        endpoint: str,
    ) -> None:
        self.side, self.kind, self.ns, self.name = side, kind, ns, name
        self.out_path = workdir / f"{side}.out"
        self.peer_net = _network(peer_inner)
        self.inner = inner
        peer_section = (
            f"[Peer]\nPublicKey = {peer_public}\nPresharedKey = {psk}\n"
            f"AllowedIPs = {self.peer_net}\nEndpoint = {endpoint}:{PORT}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        with self.out_path.open("wb") as out:
            if kind == "trio":
                conf = workdir / f"{side}.conf"
                conf.write_text(
                    f"[Interface]\nPrivateKey = {private}\nListenPort = {PORT}\n"
                    f"Address = {inner}\nMTU = {MTU}\n\n{peer_section}"
                )
                argv = [sys.executable, str(EXAMPLE), str(conf), "--name", name, "--stats"]
                self.proc = ns.popen(argv, stdout=out, stderr=sys.stderr)
            else:
                if self.socket_path.exists():
                    raise RuntimeError(f"{self.socket_path} exists: {name} is in use, not ours")
                self.conf = workdir / f"{side}.wg"
                self.conf.write_text(
                    f"[Interface]\nPrivateKey = {private}\nListenPort = {PORT}\n\n{peer_section}"
                )
                env = {**os.environ, **GO_ENV}
                argv = ["wireguard-go", "-f", name]
                self.proc = ns.popen(argv, stdout=out, stderr=sys.stderr, env=env)

    @property
    def socket_path(self) -> Path:
        return SOCKET_DIR / f"{self.name}.sock"

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def poll_ready(self) -> bool:
        """True once the peer is up and configured (go: configures it the first time)."""
        if self.kind == "trio":
            return f"{self.name} up" in self.output()
        if not self.socket_path.exists():
            return False
        _run(["wg", "setconf", self.name, str(self.conf)], ns=self.ns)

        def configure(ipr: Any) -> None:
            index = ipr.link_lookup(ifname=self.name)[0]
            address, prefix = self.inner.split("/")
            ipr.link("set", index=index, mtu=MTU, state="up")
            ipr.addr("add", index=index, address=address, prefixlen=int(prefix))
            ipr.route("add", dst=self.peer_net, oif=index)

        self.ns.netlink(configure)
        return True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def reap(self, deadline: float) -> dict[str, Any]:
        """Wait for the exit (kill at *deadline*), remove what it leaves; what it reported."""
        info: dict[str, Any] = {"kind": self.kind, "name": self.name}
        if self.proc is not None:
            try:
                self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                info["killed"] = True
            info["exit_code"] = self.proc.returncode
        if self.kind == "go" and self.proc is not None:
            # wireguard-go removes it on a clean exit; not when killed.
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        else:
            stats = self.output().split(f"interface {self.name}:", 1)
            if len(stats) == 2:
                info["stats"] = f"interface {self.name}:{stats[1]}".strip()
        return info


def _warm_up(ns: NetNamespace, target: str, deadline: float) -> bool:
    """Ping *target* from *ns* until one answers (the handshake is then done)."""
    fd = ns.fileno()
    for _ in range(WARMUP_PINGS):
        if time.monotonic() > deadline:
            return False
        done = subprocess.run(
            ["ping", "-c", "1", "-W", "1", target],
            capture_output=True,
            timeout=5,
            check=False,
            preexec_fn=lambda: _netns.setns(fd),
        )
        if done.returncode == 0:
            return True
    return False


def _bring_up(peers: list[Peer], ns_a: NetNamespace, target: str, stop: list[int]) -> str | None:
    """Wait until both peers are up, then until a ping crosses; None, or what went wrong."""
    deadline = time.monotonic() + READY_TIMEOUT
    waiting = list(peers)
    while waiting:
        if stop:
            return "stopped before READY"
        waiting = [p for p in waiting if not p.poll_ready()]
        dead = [p.side for p in peers if not p.alive()]
        if dead:
            return f"peer(s) {dead} exited before coming up"
        if waiting and time.monotonic() > deadline:
            return f"peer(s) {[p.side for p in waiting]} did not come up in {READY_TIMEOUT} s"
        time.sleep(0.05)
    if not _warm_up(ns_a, target, deadline):
        return f"no ping reply from {target} through the tunnel"
    return None


def _open_ns(path: str) -> NetNamespace:
    return NetNamespace(os.open(path, os.O_RDONLY | os.O_CLOEXEC))


def main() -> None:
    args = _fwdcommon.parse_args(__doc__ or "", _extra_args)
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    # Installed before anything starts, so a SIGTERM can't hit the default handler.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    info: dict[str, Any] = {
        "forwarder": f"wireguard {args.peer_a} <-> {args.peer_b}",
        "peers": [args.peer_a, args.peer_b],
    }
    status = 0
    peers: list[Peer] = []
    namespaces = [_open_ns(args.ns_a), _open_ns(args.ns_b)]
    try:
        with tempfile.TemporaryDirectory(prefix="trio-tun-bench-wg-") as tmp:
            workdir = Path(tmp)
            try:
                (priv_a, pub_a), (priv_b, pub_b) = _keypair(), _keypair()
                psk = _run(["wg", "genpsk"]) if shutil.which("wg") else _keypair()[0]
                common = {"psk": psk, "workdir": workdir}
                peers.append(
                    Peer(
                        "a", args.peer_a, namespaces[0], args.dev_a, private=priv_a,
                        peer_public=pub_b, inner=args.inner_a, peer_inner=args.inner_b,
                        endpoint=args.underlay_b, **common,
                    )
                )  # fmt: skip
                peers.append(
                    Peer(
                        "b", args.peer_b, namespaces[1], args.dev_b, private=priv_b,
                        peer_public=pub_a, inner=args.inner_b, peer_inner=args.inner_a,
                        endpoint=args.underlay_a, **common,
                    )
                )  # fmt: skip
                problem = _bring_up(peers, namespaces[0], args.inner_b.split("/")[0], stop)
                if problem is not None:
                    _fwdcommon.warn(problem)
                    for p in peers:
                        _fwdcommon.warn(f"peer {p.side} ({p.kind}) output: {p.output()[-500:]}")
                    status = PEER_FAILED
                if status == 0 and not stop:
                    info["peer_pids"] = [p.proc.pid for p in peers if p.proc is not None]
                    _fwdcommon.announce_ready(info)
                    polls = int(args.max_seconds / 0.1) + 1
                    for _ in range(polls):
                        if stop:
                            break
                        dead = [p.side for p in peers if not p.alive()]
                        if dead:
                            _fwdcommon.warn(f"peer(s) {dead} exited during the run")
                            status = PEER_FAILED
                            break
                        time.sleep(0.1)
            except Exception as exc:  # wg, netlink: report, then clean up below
                _fwdcommon.warn(f"{type(exc).__name__}: {exc}")
                status = PEER_FAILED
            finally:
                for p in peers:
                    p.terminate()
                deadline = time.monotonic() + STOP_TIMEOUT
                info["endpoints"] = {p.side: p.reap(deadline) for p in peers}
                info["peer_exit_codes"] = [e.get("exit_code") for e in info["endpoints"].values()]
                _fwdcommon.report(info)
    finally:
        for ns in namespaces:
            os.close(ns.fileno())
    sys.exit(status)


if __name__ == "__main__":
    main()
