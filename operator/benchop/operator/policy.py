"""What a BenchmarkRun may ask of the operator, beyond the schema: pure rules, no I/O.

A run's author must not gain more than a Job author in the same namespace (docs/install.md):

- the load-generator image is the operator's (``--image``) or one of ``--allowed-image``;
  ``spec.pod.image`` may name only those;
- ``spec.target.url`` (or each of ``spec.target.urls``) and ``spec.prometheus.url`` hosts
  may be restricted by allowlists (``--allowed-target``, ``--allowed-prometheus``; empty =
  any host).

A host allowlist holds CIDRs and hostname patterns. A literal IP in a URL (``10.0.0.7``,
``[fd00::7]``, and the legacy forms a resolver also reads as an IP, such as ``127.1`` or
``0x7f000001``) is allowed when a CIDR contains it; a name is allowed when a pattern matches it:
``vllm.default.svc`` exactly, ``*.svc.cluster.local`` any name below it (not the apex), ``*``
any name. Names are never resolved here: what a name resolves to when the worker connects is
the resolver's answer at that moment, in the worker's namespace, not the operator's now (DNS
rebinding would defeat a check made here); bound that with an egress NetworkPolicy.

    >>> rules = HostAllowlist.parse(["10.0.0.0/8", "*.svc.cluster.local"])
    >>> rules.refusal("http://vllm.ml.svc.cluster.local:8000/v1") is None
    True
    >>> rules.refusal("http://169.254.169.254/latest")
    'host 169.254.169.254 is not in the allowlist 10.0.0.0/8, *.svc.cluster.local'
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def _literal_ip(host: str) -> IpAddress | None:
    """The IP a resolver would read ``host`` as without asking DNS, else None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # ::ffff:10.0.0.7 is 10.0.0.7 to the socket
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return mapped or ip
    try:  # inet_aton also takes 127.1, 0x7f.1, 2130706433 (as getaddrinfo does)
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class HostAllowlist:
    """CIDRs for literal IPs, hostname patterns for names; empty = every host."""

    entries: tuple[str, ...] = ()
    networks: tuple[IpNetwork, ...] = ()
    names: tuple[str, ...] = ()  # exact names, "*.suffix" or "*"

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostAllowlist:
        """Raises ValueError naming a bad entry (a flag error at start-up, not a run's)."""
        kept: list[str] = []
        networks: list[IpNetwork] = []
        names: list[str] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            kept.append(entry)
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry[2:] if entry.startswith("*.") else entry
            if entry != "*" and not _NAME.fullmatch(name):
                raise ValueError(
                    f"allowlist entry {raw!r}: expected a CIDR (10.0.0.0/8, fd00::/8), an IP, "
                    "a hostname (vllm.default.svc), '*.' and a domain, or '*'"
                )
            names.append(entry)
        return cls(tuple(kept), tuple(networks), tuple(names))

    def allows(self, host: str) -> bool:
        """Whether ``host`` (a URL's host, without port or brackets) may be used."""
        if not self.entries:
            return True
        host = host.lower().rstrip(".")
        ip = _literal_ip(host)
        if ip is not None:
            return any(ip.version == net.version and ip in net for net in self.networks)
        return any(
            pattern == "*"
            or pattern == host
            or (pattern.startswith("*.") and host.endswith(pattern[1:]))
            for pattern in self.names
        )

    def refusal(self, url: str) -> str | None:
        """Why ``url``'s host is not allowed, or None when it is."""
        host = urlsplit(url).hostname or ""
        if self.allows(host):
            return None
        return f"host {host} is not in the allowlist {', '.join(self.entries)}"


@dataclass(frozen=True)
class RunPolicy:
    """The operator's allowlists (from its flags; the chart's ``operator.allowed*`` values)."""

    image: str
    allowed_images: tuple[str, ...] = ()
    targets: HostAllowlist = HostAllowlist()
    prometheus: HostAllowlist = HostAllowlist()

    @property
    def images(self) -> tuple[str, ...]:
        """Every image a run's workers may use, the operator's ``--image`` first."""
        return tuple(dict.fromkeys((self.image, *self.allowed_images)))

    def problems(
        self,
        *,
        image: str | None,
        target_url: str | None,
        prometheus_url: str | None,
        target_urls: Sequence[str] = (),
    ) -> list[str]:
        """What a run asks beyond the allowlists, one message per field (empty: allowed);
        ``target_urls`` are ``spec.target.urls`` (each one checked as ``target_url`` is)."""
        out: list[str] = []
        if image is not None and image not in self.images:
            out.append(
                f"spec.pod.image: {image!r} is not allowed; the operator runs workers only "
                f"from {', '.join(self.images)} (its --image and --allowed-image)"
            )
        for field, url, rules, flag in (
            ("spec.target.url", target_url, self.targets, "--allowed-target"),
            *(
                (f"spec.target.urls[{i}]", u, self.targets, "--allowed-target")
                for i, u in enumerate(target_urls)
            ),
            ("spec.prometheus.url", prometheus_url, self.prometheus, "--allowed-prometheus"),
        ):
            why = rules.refusal(url) if url is not None else None
            if why is not None:
                out.append(f"{field}: {why} (the operator's {flag})")
        return out
