"""testkubelet.network and proxy: pod IP allocation, the endpoints a Service port forwards to."""

from __future__ import annotations

import pytest
from testkubelet.network import IpPool, NetworkError
from testkubelet.proxy import ready_backends


def test_pool_hands_out_per_node_ips_and_keeps_an_owner_s_ip():
    pool = IpPool("10.244.0.0/16", 2)
    a = pool.allocate("a")
    assert a == "10.244.2.2"
    assert pool.allocate("a") == a
    assert pool.allocate("b", prefer="10.244.2.77") == "10.244.2.77"
    assert pool.allocate("c", prefer=a) == "10.244.2.3"  # taken: the next free one
    pool.release("a")
    assert pool.allocate("a2", prefer=a) == a  # a restarted pod's own IP, free again


def test_a_released_ip_is_the_last_to_be_used_again():
    """Round robin, as host-local IPAM: a pod the API still shows with a released IP (its
    deletion not seen yet) is not confused with the next new pod."""
    pool = IpPool("10.244.0.0/16", 1)
    a = pool.allocate("a")
    pool.release("a")
    later = [pool.allocate(str(i)) for i in range(252)]
    assert a not in later
    pool.release("7")
    assert pool.allocate("last") == a  # the only one never reused yet comes first
    assert pool.allocate("again") == later[7]  # then the released "7"


def test_reserved_ips_of_pods_that_still_have_them_are_not_handed_out():
    pool = IpPool("10.244.0.0/16", 1)
    pool.reserve("old", "10.244.1.2")
    pool.reserve("intruder", "10.244.1.2")  # taken: ignored
    assert pool.allocate("new") == "10.244.1.3"
    assert pool.allocate("old") == "10.244.1.2"


def test_pool_exhaustion():
    pool = IpPool("10.244.0.0/16", 1)
    for i in range(253):
        pool.allocate(str(i))
    with pytest.raises(NetworkError):
        pool.allocate("one-too-many")


def test_ready_backends_use_the_slice_port_of_the_named_service_port():
    slices = [
        {
            "ports": [{"name": "http", "port": 8000}, {"name": "metrics", "port": 9100}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "conditions": {"ready": True}},
                {"addresses": ["10.244.1.3"], "conditions": {"ready": False}},
                {"addresses": ["10.244.1.4"], "conditions": {"ready": True, "terminating": True}},
                {"addresses": ["10.244.1.5"], "conditions": {}},
            ],
        },
        {"ports": [{"name": "other", "port": 1}], "endpoints": [{"addresses": ["10.244.9.9"]}]},
    ]
    assert ready_backends({"name": "http", "port": 80}, slices) == [
        ("10.244.1.2", 8000),
        ("10.244.1.5", 8000),
    ]
    assert ready_backends({"name": "metrics", "port": 9100}, slices)[0] == ("10.244.1.2", 9100)
    assert ready_backends({"port": 80}, slices) == []
