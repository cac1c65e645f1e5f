"""The operator's allowlists (benchop.operator.policy): images, target and Prometheus hosts, and
how a run asking beyond them is refused (the message names the field and what is allowed)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from benchop.api.models import BenchmarkRun
from benchop.operator.command import add_arguments, settings_from_args
from benchop.operator.handlers.runs import InvalidRun, check_operator_rules
from benchop.operator.policy import HostAllowlist, RunPolicy
from benchop.operator.settings import OperatorSettings

CLUSTER = HostAllowlist.parse(["10.0.0.0/8", "fd00::/8", "*.svc.cluster.local", "vllm.ml.svc"])


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("169.254.169.254", False),
        ("127.0.0.1", False),
        # what a resolver reads as an IP without DNS is checked as that IP
        ("127.1", False),
        ("2130706433", False),
        ("0x7f.0.0.1", False),
        ("10.1", True),  # 10.0.0.1
        ("fd00::7", True),
        ("fe80::1", False),
        ("::ffff:10.0.0.7", True),  # IPv4-mapped: the socket dials 10.0.0.7
        ("::ffff:127.0.0.1", False),
        # names: exact, or any name below a "*." suffix (not the suffix itself)
        ("vllm.ml.svc", True),
        ("VLLM.ml.svc.", True),  # case and the root dot do not matter
        ("x.vllm.ml.svc", False),
        ("vllm.ml.svc.cluster.local", True),
        ("svc.cluster.local", False),
        ("evilsvc.cluster.local", False),
        ("localhost", False),
        ("metadata.google.internal", False),
        ("", False),
    ],
)
def test_hosts_match_cidrs_as_ips_and_patterns_as_names(host: str, allowed: bool) -> None:
    assert CLUSTER.allows(host) is allowed


def test_an_empty_allowlist_allows_every_host_and_star_every_name() -> None:
    assert HostAllowlist.parse([]).allows("169.254.169.254")
    star = HostAllowlist.parse(["*"])
    assert star.allows("anything.example") and not star.allows("10.0.0.1")  # names only


def test_only_cidrs_refuse_every_name() -> None:
    ips = HostAllowlist.parse(["10.0.0.0/8"])
    assert not ips.allows("vllm.default.svc")  # never resolved: a name is not an IP


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "vllm_1.svc", "*vllm.svc", "a.*.svc", "-a.svc"])
def test_a_bad_entry_is_refused_with_its_text(bad: str) -> None:
    with pytest.raises(ValueError, match="allowlist entry"):
        HostAllowlist.parse([bad])


def test_refusals_name_the_url_host_and_the_allowlist() -> None:
    assert CLUSTER.refusal("http://[fd00::7]:8000/v1") is None
    assert CLUSTER.refusal("https://api.openai.com/v1") == (
        "host api.openai.com is not in the allowlist "
        "10.0.0.0/8, fd00::/8, *.svc.cluster.local, vllm.ml.svc"
    )


def test_the_run_policy_names_each_field_it_refuses() -> None:
    policy = RunPolicy(
        image="ghcr.io/benchop/benchop:0.1.0",
        allowed_images=("registry.local/benchop:0.1.0",),
        targets=HostAllowlist.parse(["*.svc"]),
        prometheus=HostAllowlist.parse(["prometheus.monitoring.svc"]),
    )
    assert policy.images == ("ghcr.io/benchop/benchop:0.1.0", "registry.local/benchop:0.1.0")
    ok = policy.problems(
        image="registry.local/benchop:0.1.0",
        target_url="http://vllm.ml.svc:8000/v1",
        prometheus_url="http://prometheus.monitoring.svc:9090",
    )
    assert ok == []
    assert policy.problems(image=None, target_url=None, prometheus_url=None) == []
    assert policy.problems(
        image="attacker/miner:latest",
        target_url="http://10.0.0.1:8000/v1",
        prometheus_url="http://kube-apiserver.default.svc:443",
    ) == [
        "spec.pod.image: 'attacker/miner:latest' is not allowed; the operator runs workers only "
        "from ghcr.io/benchop/benchop:0.1.0, registry.local/benchop:0.1.0 "
        "(its --image and --allowed-image)",
        "spec.target.url: host 10.0.0.1 is not in the allowlist *.svc "
        "(the operator's --allowed-target)",
        "spec.prometheus.url: host kube-apiserver.default.svc is not in the allowlist "
        "prometheus.monitoring.svc (the operator's --allowed-prometheus)",
    ]
    # several target URLs (spec.target.urls): each is checked and named by its index
    assert policy.problems(
        image=None,
        target_url=None,
        prometheus_url=None,
        target_urls=["http://vllm-0.ml.svc:8000/v1", "http://169.254.169.254/v1"],
    ) == [
        "spec.target.urls[1]: host 169.254.169.254 is not in the allowlist *.svc "
        "(the operator's --allowed-target)"
    ]


def _run(**spec: Any) -> BenchmarkRun:
    body = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {
            "target": {"url": "http://vllm.ml.svc:8000/v1", "model": "m"},
            "load": {"concurrency": 1},
            "phases": {"profiling": {"requests": 1}},
            **spec,
        },
    }
    return BenchmarkRun.model_validate(body)


def test_the_operator_refuses_another_image_by_default() -> None:
    settings = OperatorSettings(image="ghcr.io/benchop/benchop:0.1.0")
    check_operator_rules(_run(), settings)
    check_operator_rules(_run(pod={"image": "ghcr.io/benchop/benchop:0.1.0"}), settings)
    with pytest.raises(InvalidRun, match=r"^spec\.pod\.image: 'busybox' is not allowed"):
        check_operator_rules(_run(pod={"image": "busybox"}), settings)


def test_the_operator_checks_target_and_prometheus_hosts_when_configured() -> None:
    settings = OperatorSettings(allowed_targets=("*.ml.svc",), allowed_prometheus=("10.0.0.0/8",))
    check_operator_rules(_run(prometheus={"url": "http://10.9.0.1:9090"}), settings)
    with pytest.raises(InvalidRun, match=r"^spec\.prometheus\.url: host prom\.x is not"):
        check_operator_rules(_run(prometheus={"url": "http://prom.x:9090"}), settings)
    run = _run(target={"url": "http://169.254.169.254/latest", "model": "m"})
    with pytest.raises(InvalidRun, match=r"^spec\.target\.url: host 169\.254\.169\.254 is not"):
        check_operator_rules(run, settings)
    check_operator_rules(run, OperatorSettings())  # no allowlist: any host
    # several URLs: every one is checked (a second replica is no way around the allowlist)
    urls = ["http://vllm-0.ml.svc:8000/v1", "http://169.254.169.254/latest"]
    with pytest.raises(InvalidRun, match=r"^spec\.target\.urls\[1\]: host 169\.254\.169\.254"):
        check_operator_rules(_run(target={"urls": urls, "model": "m"}), settings)
    check_operator_rules(_run(target={"urls": urls[:1], "model": "m"}), settings)


def _flags(*argv: str) -> OperatorSettings:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return settings_from_args(p.parse_args(list(argv)))


def test_flags_carry_the_allowlists() -> None:
    s = _flags(
        "--image=img:1",
        "--allowed-image=img:2",
        "--allowed-target=10.0.0.0/8",
        "--allowed-target=*.svc",
        "--allowed-prometheus=prometheus.monitoring.svc",
    )
    assert (s.allowed_images, s.allowed_targets) == (("img:2",), ("10.0.0.0/8", "*.svc"))
    assert s.policy().images == ("img:1", "img:2")
    assert s.policy().prometheus.names == ("prometheus.monitoring.svc",)
    assert _flags().policy() == RunPolicy(image=_flags().image)  # nothing but --image allowed


def test_a_bad_allowlist_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        _flags("--allowed-target=10.0.0.0/40")
    with pytest.raises(ValueError, match="allowlist entry"):
        OperatorSettings(allowed_targets=("not a host",))


def test_the_operators_own_default_target_is_not_checked() -> None:
    """--default-target-url (the chart's mock server) is the operator's, not the author's."""
    from benchop.operator.handlers.runs import with_default_target

    settings = OperatorSettings(
        allowed_targets=("*.ml.svc",), default_target_url="http://benchop-mock.ops.local:8000/v1"
    )
    run = _run()
    run.spec.target.url = None
    check_operator_rules(with_default_target(run, settings.default_target_url), settings)
    elsewhere = _run(target={"url": "http://benchop-mock.other.local:8000/v1", "model": "m"})
    with pytest.raises(InvalidRun, match=r"^spec\.target\.url: host benchop-mock\.other\.local"):
        check_operator_rules(elsewhere, settings)
