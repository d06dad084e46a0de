"""One dnsmasq per network: DHCP with fixed addresses, and DNS for the instances' names.

Only known MACs get an address (``dhcp-range=...,static``): the address each NIC was given
when it was attached, kept across stop/start. Names resolve from an ``addn-hosts`` file, so a
VM is in DNS from the moment it exists, not only once it asked for a lease. Both files are
rewritten and re-read (SIGHUP) when NICs come and go. A NAT network's dnsmasq also forwards
other names to the uplink's DNS servers. dnsmasq runs in the network's namespace,
detached like the VMs, so it outlives a service restart.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

from gureum.errors import EngineError
from gureum.model.network import Network, Nic
from gureum.sys import procs


class Dhcp:
    def __init__(
        self, folder: Path, namespace: str, network: Network, servers: list[str] | None = None
    ) -> None:
        self.folder = folder
        self.namespace = namespace
        self.network = network
        # Upstream DNS servers (a NAT network's): names not of this network are forwarded
        # there. None: this network's names only (a sealed network has nowhere to ask).
        self.servers = servers or []
        self._proc: subprocess.Popen[bytes] | None = None  # when this process started it
        self._writing = threading.Lock()

    @property
    def pidfile(self) -> Path:
        return self.folder / "dnsmasq.pid"

    def pid(self) -> int | None:
        if self._proc is not None:
            self._proc.poll()  # reap it if it died, rather than leave a zombie
        pid = procs.read_pidfile(self.pidfile)
        if (
            pid is not None
            and procs.is_alive(pid)
            and any(str(self.folder) in a for a in procs.cmdline(pid))
        ):
            return pid
        return None

    def write_hosts(self, nics: list[tuple[Nic, str]], mtu: int | None = None) -> None:
        """``nics``: (NIC, hostname) pairs of this network; ``mtu``: the MTU guests are told
        (None: their own default). Safe to call from several threads at once (two VMs of one
        network booting together each sync it): one writer at a time, so that the files
        always come from the same call. dnsmasq reads them all again on SIGHUP (``reload``)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        dhcp = "".join(f"{n.mac},{n.ip},{host},infinite\n" for n, host in nics)
        dns = "".join(f"{n.ip} {host}\n" for n, host in nics)
        opts = f"option:mtu,{int(mtu)}\n" if mtu is not None else ""
        with self._writing:
            for name, text in (("dhcp-hosts", dhcp), ("hosts", dns), ("dhcp-opts", opts)):
                tmp = self.folder / f"{name}.tmp"
                tmp.write_text(text)
                tmp.rename(self.folder / name)

    def argv(self) -> list[str]:
        net = self.network
        f = self.folder
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",  # never Debian's /etc/dnsmasq.conf
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--interface=br0",
            "--except-interface=lo",
            f"--listen-address={net.gateway}",
            f"--dhcp-range={net.net.network_address},static,{net.net.netmask},infinite",
            f"--dhcp-hostsfile={f / 'dhcp-hosts'}",
            f"--addn-hosts={f / 'hosts'}",
            f"--dhcp-optsfile={f / 'dhcp-opts'}",
            f"--dhcp-option=option:router,{net.gateway}",
            f"--dhcp-option=option:dns-server,{net.gateway}",
            f"--dhcp-leasefile={f / 'leases'}",
            f"--pid-file={self.pidfile}",
            f"--log-facility={f / 'dnsmasq.log'}",
            "--dhcp-authoritative",
            "--user=root",
            "--group=root",
            *(f"--server={server}" for server in self.servers),
        ]

    def start(self) -> int:
        if (pid := self.pid()) is not None:
            return pid
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in ("dhcp-hosts", "hosts", "dhcp-opts"):
            (self.folder / name).touch()
        log = open(self.folder / "dnsmasq.out", "ab")  # noqa: SIM115 - handed to the child
        with log:
            proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._proc = proc
        for _ in range(200):
            if (pid := self.pid()) is not None:
                return pid
            if proc.poll() is not None:
                said = (self.folder / "dnsmasq.out").read_text(errors="replace")[-500:]
                raise EngineError(f"dnsmasq for network {self.network.name} failed: {said}")
            time.sleep(0.01)
        raise EngineError(f"dnsmasq for network {self.network.name} did not start")

    def reload(self, nics: list[tuple[Nic, str]]) -> None:
        """Re-read the host files; restart instead when a lease belongs to a NIC that is gone.

        dnsmasq never hands a fixed address to a new MAC while an old lease holds it, and it
        reads its lease file only when it starts: a gone NIC's address would stay blocked.
        """
        macs = {n.mac.lower() for n, _ in nics}
        leases = self.folder / "leases"
        lines = leases.read_text().splitlines() if leases.exists() else []
        kept = [line for line in lines if len(line.split()) > 1 and line.split()[1].lower() in macs]
        if len(kept) != len(lines):
            self.stop()
            leases.write_text("".join(f"{line}\n" for line in kept))
            self.start()
            return
        pid = self.pid()
        if pid is not None:
            procs.kill(pid, signal.SIGHUP)

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            procs.kill(pid, signal.SIGTERM)
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
