"""Fuzzing over real loopback sockets within the CI budget: the load generator's HTTP client
(a server answering anything) and every ZMQ socket role (baseline server, gate coordinator,
snapshot collector) fed any multipart message."""

from __future__ import annotations

import fuzzstrategies as fs
import pytest
from budget import budget
from fuzztargets import Harness
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(240)


@budget(150)
@given(fs.http_answers())
def test_http_hostile_answers(fuzz: Harness, data: bytes) -> None:
    fuzz.http(data)


@budget(40)
@given(st.binary(max_size=128))
def test_http_random_bytes(fuzz: Harness, data: bytes) -> None:
    fuzz.http(data)


@budget(120)
@given(st.one_of(fs.multipart("BaselineRequest"), fs.multipart(), st.binary(max_size=64)))
def test_baseline_server_frames(fuzz: Harness, data: bytes) -> None:
    fuzz.baseline(data)


@budget(120)
@given(st.one_of(fs.multipart("GateRequest"), fs.multipart(), st.binary(max_size=64)))
def test_gate_coordinator_frames(fuzz: Harness, data: bytes) -> None:
    fuzz.gates(data)


@budget(150)
@given(st.one_of(fs.snapshot_frames(), fs.multipart(envelope=False), st.binary(max_size=64)))
def test_snapshot_collector_frames(fuzz: Harness, data: bytes) -> None:
    fuzz.snapshots(data)
