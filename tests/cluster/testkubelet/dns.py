"""Cluster DNS as files: a per-pod ``/etc/hosts`` and an ``/etc/resolv.conf`` that fails fast.

There is no DNS server. Every pod's hosts file names the pod itself (as the kubelet's managed
hosts file does) and every Service: ``<svc>.<ns>.svc.cluster.local <svc>.<ns>.svc <svc>.<ns>``
(+ ``<svc>`` in the pod's own namespace) -> ClusterIP, or, for a headless Service, -> each ready
endpoint (and ``<hostname>.<svc>.<ns>.svc.cluster.local`` for endpoints with a hostname, which is
how Indexed-Job pods with a subdomain find each other); not-ready endpoints have no records
unless the Service publishes them, as with CoreDNS. The resolver points at 127.0.0.1 in the
pod's network namespace, where nothing listens, so names that are not in the file fail at once.

Files are rewritten in place (:func:`write_in_place`): they are bind-mounted into containers,
which see only the inode they were given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADER = """\
# Kubernetes-managed hosts file (testkubelet).
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


@dataclass(frozen=True)
class ServiceRecord:
    """What DNS needs of a Service: its IPs (ClusterIP, or ready endpoints when headless) and
    ``(hostname, ip)`` pairs of endpoints that carry a hostname."""

    name: str
    namespace: str
    ips: tuple[str, ...]
    hostnames: tuple[tuple[str, str], ...] = ()


def service_records(
    services: Iterable[dict[str, Any]], slices: Iterable[dict[str, Any]]
) -> list[ServiceRecord]:
    """ServiceRecords from Service and EndpointSlice objects (ExternalName Services are left out:
    a hosts file cannot hold a CNAME)."""
    endpoints: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in slices:
        svc = (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        if svc:
            endpoints.setdefault((s["metadata"]["namespace"], svc), []).extend(
                s.get("endpoints") or []
            )
    out = []
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        key = (meta["namespace"], meta["name"])
        if spec.get("type") == "ExternalName":
            continue
        hostnames = []
        ready_ips: list[str] = []
        for ep in endpoints.get(key, []):
            ready = (ep.get("conditions") or {}).get("ready") is not False
            if not (ready or spec.get("publishNotReadyAddresses")):
                continue  # as CoreDNS: not-ready endpoints have no records
            for ip in ep.get("addresses") or []:
                if ep.get("hostname"):
                    hostnames.append((ep["hostname"], ip))
                ready_ips.append(ip)
        cluster_ip = spec.get("clusterIP") or ""
        ips = tuple(sorted(set(ready_ips))) if cluster_ip in ("", "None") else (cluster_ip,)
        out.append(ServiceRecord(meta["name"], meta["namespace"], ips, tuple(sorted(hostnames))))
    return sorted(out, key=lambda r: (r.namespace, r.name))


def pod_fqdn_names(pod: dict[str, Any], domain: str) -> list[str]:
    """The names of the pod itself: ``[<host>.<subdomain>.<ns>.svc.<domain>, <host>]`` or
    ``[<host>]``."""
    host = pod_hostname(pod)
    sub = pod["spec"].get("subdomain")
    if sub:
        return [f"{host}.{sub}.{pod['metadata']['namespace']}.svc.{domain}", host]
    return [host]


def pod_hostname(pod: dict[str, Any]) -> str:
    """``spec.hostname`` or the pod name, truncated to 63 characters like the kubelet does."""
    host = pod["spec"].get("hostname") or pod["metadata"]["name"]
    return host[:63].rstrip("-.") if len(host) > 63 else host


def render_hosts(
    pod: dict[str, Any],
    pod_ip: str,
    records: Iterable[ServiceRecord],
    *,
    domain: str = "cluster.local",
) -> str:
    """The whole hosts file for ``pod`` (whose IP is ``pod_ip``)."""
    ns = pod["metadata"]["namespace"]
    lines = [HEADER.rstrip("\n"), f"{pod_ip}\t" + "\t".join(pod_fqdn_names(pod, domain))]
    for alias in pod["spec"].get("hostAliases") or []:
        if alias.get("ip") and alias.get("hostnames"):
            lines.append("# Entries added by HostAliases.")
            lines.append(f"{alias['ip']}\t" + "\t".join(alias["hostnames"]))
    lines.append("# Services (testkubelet DNS).")
    for r in records:
        names = [
            f"{r.name}.{r.namespace}.svc.{domain}",
            f"{r.name}.{r.namespace}.svc",
            f"{r.name}.{r.namespace}",
        ]
        if r.namespace == ns:
            names.append(r.name)
        for ip in r.ips:
            lines.append(f"{ip}\t" + " ".join(names))
        for host, ip in r.hostnames:
            lines.append(f"{ip}\t{host}.{r.name}.{r.namespace}.svc.{domain}")
    return "\n".join(lines) + "\n"


def render_resolv_conf(namespace: str, *, domain: str = "cluster.local") -> str:
    """A resolver that finds nothing, quickly: names resolve through the hosts file only."""
    return (
        f"search {namespace}.svc.{domain} svc.{domain} {domain}\n"
        "nameserver 127.0.0.1\n"
        "options ndots:5 timeout:1 attempts:1\n"
    )


def write_in_place(path: Path, text: str) -> bool:
    """Replace the content of ``path`` keeping its inode (bind mounts see the change); return
    whether it changed."""
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return True
