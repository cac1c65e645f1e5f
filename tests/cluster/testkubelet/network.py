"""Pod networking: one network namespace per pod, a veth into the host bridge, an IP per pod.

The bridge (``bnp0``, holding the host IP 10.244.0.1/16) belongs to hack/kube-up.sh. Per pod:
``ip netns add <bridge>-<pod uid>``, a veth pair (host end ``v<hash>`` enslaved to the bridge,
``eth0`` inside), the pod IP, ``lo`` up, default route via the host IP, and unprivileged ports
from 0 (as containerd's CRI sets up a sandbox). Node *n* (1-based) hands out
``<pod net>.<n>.2`` .. ``<pod net>.<n>.254``.

Service ClusterIPs need no per-Service address: a ``local`` route for the whole service CIDR makes
every address in it local to the host, so the userspace proxy (proxy.py) can bind any ClusterIP.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging

log = logging.getLogger(__name__)


class NetworkError(Exception):
    pass


class IpPool:
    """Pod IPs of one node: ``IpPool("10.244.0.0/16", 1).allocate("uid") == "10.244.1.2"``.

    Like CNI's host-local IPAM, a new owner gets the next free IP after the last one handed
    out (round robin), so a released IP is the last to be used again: a pod the API still
    shows with that IP (a deletion not yet seen) is not confused with a new one."""

    def __init__(self, cidr: str, node_index: int) -> None:
        net = ipaddress.ip_network(cidr)
        base = int(net.network_address) + node_index * 256
        self._free = [str(ipaddress.ip_address(base + i)) for i in range(2, 255)]
        if not all(ipaddress.ip_address(ip) in net for ip in (self._free[0], self._free[-1])):
            raise ValueError(f"node index {node_index} does not fit in {cidr}")
        self._owner: dict[str, str] = {}
        self._next = 0  # where the round robin goes on

    def allocate(self, owner: str, prefer: str | None = None) -> str:
        """An IP for ``owner`` (the same one again if it has one; ``prefer`` if free)."""
        for ip, who in self._owner.items():
            if who == owner:
                return ip
        if prefer in self._free and prefer not in self._owner:
            self._owner[prefer] = owner
            return prefer
        n = len(self._free)
        for k in range(n):
            ip = self._free[(self._next + k) % n]
            if ip not in self._owner:
                self._owner[ip] = owner
                self._next = (self._next + k + 1) % n
                return ip
        raise NetworkError("no free pod IP on this node")

    def reserve(self, owner: str, ip: str) -> None:
        """Hold ``ip`` for ``owner`` (a pod that had it before a kubelet restart), if free."""
        if ip in self._free and ip not in self._owner and owner not in self._owner.values():
            self._owner[ip] = owner

    def release(self, owner: str) -> None:
        for ip, who in list(self._owner.items()):
            if who == owner:
                del self._owner[ip]


async def _run(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(args)}: {err.decode().strip() or out.decode().strip()}")
    return out.decode()


class Network:
    """Sandboxes on ``bridge``; ``netns_path(uid)`` is what the shim enters."""

    def __init__(self, *, bridge: str, host_ip: str, pod_cidr: str, service_cidr: str) -> None:
        self.bridge = bridge
        self.host_ip = host_ip
        self.prefix_len = ipaddress.ip_network(pod_cidr).prefixlen
        self.service_cidr = service_cidr

    def netns_name(self, uid: str) -> str:
        return f"{self.bridge}-{uid}"

    def netns_path(self, uid: str) -> str:
        return f"/var/run/netns/{self.netns_name(uid)}"

    def _veth(self, uid: str) -> str:
        return "v" + hashlib.sha1(self.netns_name(uid).encode()).hexdigest()[:12]

    async def setup_host(self) -> None:
        """Check the bridge; make the service CIDR local; drop sandboxes a previous run left."""
        out = await _run("ip", "-o", "addr", "show", "dev", self.bridge, check=False)
        if f" {self.host_ip}/" not in out:
            raise NetworkError(
                f"bridge {self.bridge} with {self.host_ip} not found (hack/kube-up.sh creates it)"
            )
        await _run(
            "ip", "route", "replace", "local", self.service_cidr, "dev", "lo", "table", "local"
        )
        await self.cleanup_stale()

    async def teardown_host(self) -> None:
        await _run(
            "ip",
            "route",
            "del",
            "local",
            self.service_cidr,
            "dev",
            "lo",
            "table",
            "local",
            check=False,
        )
        await self.cleanup_stale()

    async def cleanup_stale(self) -> None:
        out = await _run("ip", "netns", "list", check=False)
        for line in out.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{self.bridge}-"):
                log.info("deleting stale network namespace %s", name)
                await _run("ip", "netns", "del", name, check=False)

    async def create_sandbox(self, uid: str, ip: str) -> str:
        """The pod's network namespace with ``ip``; returns its path."""
        name, veth = self.netns_name(uid), self._veth(uid)
        await self.delete_sandbox(uid)
        try:
            await _run(
                "ip",
                "-b",
                "-",
                stdin="\n".join(
                    [
                        f"netns add {name}",
                        f"link add {veth} type veth peer name eth0 netns {name}",
                        f"link set {veth} master {self.bridge}",
                        f"link set {veth} up",
                    ]
                )
                + "\n",
            )
            await _run(
                "ip",
                "-n",
                name,
                "-b",
                "-",
                stdin="\n".join(
                    [
                        "link set lo up",
                        f"addr add {ip}/{self.prefix_len} dev eth0",
                        "link set eth0 up",
                        f"route add default via {self.host_ip}",
                    ]
                )
                + "\n",
            )
            await _run(
                "ip",
                "netns",
                "exec",
                name,
                "sh",
                "-c",
                "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
            )
        except NetworkError:
            await self.delete_sandbox(uid)
            raise
        return self.netns_path(uid)

    async def delete_sandbox(self, uid: str) -> None:
        await _run("ip", "netns", "del", self.netns_name(uid), check=False)
        await _run("ip", "link", "del", self._veth(uid), check=False)
