"""Which GPUs belong to a run: PromQL label matchers and the pod-attribution filter.

A run's GPUs are those of the target's pods. The agent (like dcgm-exporter)
labels a GPU's series with ``pod``/``namespace`` when the kubelet says which
container holds it, and always with ``Hostname``. So:

- with nodes known, each metric is queried once for every GPU of the nodes
  (``Hostname=~"node-a|node-b"``), then :func:`keep` narrows per node: on a
  node where any series carries a ``pod`` label (attribution works there) only
  the target pods' GPUs are kept; on a node without attribution every GPU is
  kept (the fallback: the node's GPUs stand in for the pod's);
- with only pods known, the query matches ``namespace`` and ``pod`` directly.

    >>> GpuSelector(nodes=("gpu1", "gpu2")).matchers()
    '{Hostname=~"gpu1|gpu2"}'

The operator builds one from the target's pods (listed with
:func:`~benchop.core.selectors.label_selector` of ``spec.target.podSelector``)::

    selector = GpuSelector.from_pods(namespace, pod_bodies)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GpuSelector:
    """The target's pods (in ``namespace``) and the nodes they run on."""

    namespace: str | None = None
    pods: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()

    @classmethod
    def from_pods(cls, namespace: str, pods: Iterable[Mapping[str, Any]]) -> GpuSelector:
        """The pods' names and the nodes they are scheduled on (pod bodies as dicts)."""
        names, nodes = [], []
        for pod in pods:
            meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
            if meta.get("name"):
                names.append(meta["name"])
            if spec.get("nodeName"):
                nodes.append(spec["nodeName"])
        return cls(namespace, tuple(sorted(set(names))), tuple(sorted(set(nodes))))

    @property
    def empty(self) -> bool:
        return not self.nodes and not self.pods

    def matchers(self) -> str:
        """The PromQL label matchers ``{...}``; raises ValueError when nothing is selected."""
        if self.nodes:
            return "{" + f"Hostname=~{_alternation(self.nodes)}" + "}"
        if self.pods:
            parts = [f"namespace={_quote(self.namespace)}"] if self.namespace else []
            parts.append(f"pod=~{_alternation(self.pods)}")
            return "{" + ",".join(parts) + "}"
        raise ValueError("GpuSelector selects nothing: give the target's pods or nodes")

    def owns(self, labels: Mapping[str, str]) -> bool:
        """True when a series' pod labels name one of the target pods."""
        if labels.get("pod") not in self.pods:
            return False
        return self.namespace is None or labels.get("namespace") == self.namespace


def _quote(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_RE2_META = re.compile(r"([\\.+*?()|\[\]{}^$])")


def _alternation(values: Iterable[str]) -> str:
    """An RE2 alternation of literal ``values`` (PromQL anchors ``=~`` matches)."""
    return _quote("|".join(_RE2_META.sub(r"\\\1", v) for v in sorted(set(values))))


def attribution(labels: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Per Hostname: ``"pod"`` when any series there carries a pod label, else ``"node"``."""
    out: dict[str, str] = {}
    for lab in labels:
        host = lab.get("Hostname", "")
        if lab.get("pod"):
            out[host] = "pod"
        else:
            out.setdefault(host, "node")
    return out


def keep(labels: Mapping[str, str], selector: GpuSelector, modes: Mapping[str, str]) -> bool:
    """Whether a series belongs to the run, given the per-node ``modes`` of :func:`attribution`."""
    if not selector.nodes:  # queried by pod: the query already selected
        return True
    if modes.get(labels.get("Hostname", "")) == "pod" and selector.pods:
        return selector.owns(labels)
    return True
