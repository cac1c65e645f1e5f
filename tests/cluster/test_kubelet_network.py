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
    assert pool.allocate("d") == a


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
