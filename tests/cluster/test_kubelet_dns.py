"""testkubelet.dns: hosts files and resolv.conf of pods."""

from __future__ import annotations

import os

from testkubelet.dns import (
    pod_hostname,
    render_hosts,
    render_resolv_conf,
    service_records,
    write_in_place,
)


def pod(name="p", ns="ns", **spec):
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def service(name, ns, ip, **spec):
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip, **spec}}


def slice_(svc, ns, endpoints):
    return {
        "metadata": {"namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "endpoints": endpoints,
    }


SERVICES = [
    service("kubernetes", "default", "10.96.0.1"),
    service("mock", "ns", "10.96.0.5"),
    service("workers", "ns", "None"),
    service("ext", "ns", "", type="ExternalName", externalName="example.com"),
]
SLICES = [
    slice_(
        "workers",
        "ns",
        [
            {"addresses": ["10.244.1.3"], "hostname": "run-0", "conditions": {"ready": True}},
            {"addresses": ["10.244.1.4"], "hostname": "run-1", "conditions": {"ready": False}},
        ],
    ),
]


def test_records_clusterip_headless_and_hostnames():
    recs = {(r.namespace, r.name): r for r in service_records(SERVICES, SLICES)}
    assert recs[("default", "kubernetes")].ips == ("10.96.0.1",)
    assert recs[("ns", "workers")].ips == ("10.244.1.3",)  # ready endpoints only
    assert recs[("ns", "workers")].hostnames == (("run-0", "10.244.1.3"),)
    assert ("ns", "ext") not in recs


def test_hosts_file_names_services_and_the_pod_itself():
    text = render_hosts(pod(), "10.244.1.2", service_records(SERVICES, SLICES))
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert "10.244.1.2\tp" in lines
    assert "10.96.0.5\tmock.ns.svc.cluster.local mock.ns.svc mock.ns mock" in lines
    assert (
        "10.96.0.1\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default"
    ) in lines  # no short name from another namespace
    assert "10.244.1.3\tworkers.ns.svc.cluster.local workers.ns.svc workers.ns workers" in lines
    assert "10.244.1.3\trun-0.workers.ns.svc.cluster.local" in lines
    assert "10.244.1.4" not in text


def test_indexed_job_pod_with_subdomain_and_host_aliases():
    p = pod(
        "run-abc12",
        hostname="run-3",
        subdomain="workers",
        hostAliases=[{"ip": "10.0.0.9", "hostnames": ["model", "model.local"]}],
    )
    lines = render_hosts(p, "10.244.1.9", []).splitlines()
    assert "10.244.1.9\trun-3.workers.ns.svc.cluster.local\trun-3" in lines
    assert "10.0.0.9\tmodel\tmodel.local" in lines


def test_pod_hostname_truncation():
    assert pod_hostname(pod("a" * 70)) == "a" * 63
    assert pod_hostname(pod("a" * 62 + "-xyz")) == "a" * 62
    assert pod_hostname(pod("x", hostname="h")) == "h"


def test_resolv_conf_searches_the_namespace_and_fails_fast():
    text = render_resolv_conf("ns")
    assert text.startswith("search ns.svc.cluster.local svc.cluster.local cluster.local\n")
    assert "nameserver 127.0.0.1" in text
    assert "attempts:1" in text


def test_write_in_place_keeps_the_inode(tmp_path):
    path = tmp_path / "hosts"
    assert write_in_place(path, "one\n")
    inode = os.stat(path).st_ino
    assert not write_in_place(path, "one\n")
    assert write_in_place(path, "two\nlines\n")
    assert os.stat(path).st_ino == inode
    assert path.read_text() == "two\nlines\n"
