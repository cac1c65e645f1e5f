"""The wire codec: every message round-trips; garbage is counted and dropped, never raised."""

from __future__ import annotations

import logging

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchagent.codec import Codec, MsgpackCodec
from benchagent.wire import (
    BaselineAck,
    BaselineRequest,
    GateDenied,
    GateGranted,
    GateRequest,
    GpuSample,
    Message,
    MetricsSnapshot,
    ResumeReply,
    ResumeRequest,
    SeriesSummary,
    TimelineRow,
)

SAMPLE = GpuSample(
    index=0,
    uuid="GPU-0",
    name="H100",
    timestamp_ns=1_700_000_000_000_000_000,
    gpu_util_pct=93.5,
    mem_copy_util_pct=12.0,
    mem_used_bytes=70 << 30,
    mem_total_bytes=80 << 30,
    power_w=612.25,
    power_limit_w=700.0,
    energy_mj=123_456_789_012,
    temperature_c=61.0,
    sm_clock_mhz=1980,
    mem_clock_mhz=2619,
)

MESSAGES: list[Message] = [
    BaselineRequest(request_id="r1", run="ns/run", phase_id="p1", boundary="START"),
    BaselineRequest(request_id="r2", run="ns/run", phase_id="p1", boundary="END", gpus=["GPU-0"]),
    BaselineAck(
        request_id="r1",
        run="ns/run",
        phase_id="p1",
        boundary="START",
        agent="agent-a",
        node="node-1",
        success=True,
        samples=[
            SAMPLE,
            msgspec.structs.replace(SAMPLE, index=1, error="XID 79"),
            msgspec.structs.replace(SAMPLE, index=2, util_integral_pct_s=12345.678),
        ],
    ),
    BaselineAck(
        request_id="r1",
        run="ns/run",
        phase_id="p1",
        boundary="END",
        agent="agent-a",
        node="node-1",
        success=False,
        error="nvml not loaded",
        simulated=True,
    ),
    GateRequest(run="ns/run", phase_id="p1", boundary="START", worker=1, workers=2),
    GateGranted(
        run="ns/run",
        phase_id="p1",
        boundary="END",
        worker=0,
        start_at_ns=2**62,
        baseline_captured=False,
        missing=["agent-b"],
    ),
    GateDenied(run="x", phase_id="p1", boundary="START", worker=3, reason="unknown run"),
    MetricsSnapshot(
        run="ns/run",
        worker=1,
        seq=7,
        state="COMPLETE",
        phase="done",
        time_ns=1,
        elapsed_s=12.5,
        n_pending=0,
        counters={"requests_total": 10},
        gauges={"client_cpu_pct": 41.5},
        series={
            "ttft_ns": SeriesSummary(
                count=2,
                sum=3_000_000_000_000_000_001,  # beyond float precision: must stay exact
                m2=0.5,
                min=1,
                max=3_000_000_000_000_000_000,
                buckets={3: 1, 120: 1},
                values=b"\x01\x00\x00\x00\x00\x00\x00\x00",
            )
        },
        interrupted=True,
        attempt=3,
        incarnation="2f0c6e1a-pod-uid",
    ),
    ResumeRequest(run="ns.run.abcd1234", worker=1, workers=2, incarnation="uid-b"),
    ResumeReply(run="ns.run.abcd1234", worker=1, status="wait"),
    ResumeReply(run="x", worker=0, status="denied", reason="not registered"),
    ResumeReply(
        run="ns.run.abcd1234",
        worker=1,
        status="ready",
        base=MetricsSnapshot(
            run="ns.run.abcd1234",
            worker=1,
            seq=40,
            state="COMPLETE",
            phase="profiling",
            time_ns=5,
            elapsed_s=3.25,
            n_pending=0,
            counters={"requests_total": 2},
            series={
                "ttft_ns": SeriesSummary(count=1, sum=7, min=7, max=7, values=b"\x07" + 7 * b"\0")
            },
            interrupted=True,
            timeline=[TimelineRow(t_s=1_700_000_000, requests=2, ok=2, ttft={3: 2})],
            attempt=2,
            incarnation="uid-a",
        ),
    ),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    codec = MsgpackCodec()
    decoded = codec.decode(codec.encode(msg))
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert codec.decode_errors == 0


def test_gpu_samples_of_old_and_new_peers_decode_each_other() -> None:
    """``util_integral_pct_s`` is optional: an older peer's sample lacks it, and a newer
    sample decodes in an older peer (msgspec ignores unknown fields)."""

    class OldGpuSample(msgspec.Struct, frozen=True, kw_only=True):
        index: int
        uuid: str
        name: str
        timestamp_ns: int
        gpu_util_pct: float
        mem_copy_util_pct: float
        mem_used_bytes: int
        mem_total_bytes: int
        power_w: float
        power_limit_w: float
        energy_mj: int
        temperature_c: float
        sm_clock_mhz: int
        mem_clock_mhz: int
        error: str | None = None

    fields = {f: getattr(SAMPLE, f) for f in OldGpuSample.__struct_fields__}
    old = msgspec.msgpack.encode(OldGpuSample(**fields))
    assert msgspec.msgpack.decode(old, type=GpuSample) == SAMPLE  # integral None
    new = msgspec.msgpack.encode(msgspec.structs.replace(SAMPLE, util_integral_pct_s=5.0))
    assert msgspec.msgpack.decode(new, type=OldGpuSample) == OldGpuSample(**fields)


def test_codec_satisfies_the_protocol() -> None:
    codec: Codec = MsgpackCodec()
    assert codec.decode_errors == 0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\xc1",  # never-used msgpack byte
        msgspec.msgpack.encode({"kind": "NoSuchKind"}),
        msgspec.msgpack.encode({"kind": "GateRequest", "run": "r"}),  # missing fields
        msgspec.msgpack.encode(
            {"kind": "GateRequest", "run": 1, "phase_id": "p", "boundary": "START", "worker": 0}
        ),
        msgspec.msgpack.encode(
            {
                "kind": "GateRequest",
                "run": "r",
                "phase_id": "p",
                "boundary": "MIDDLE",  # not a Boundary
                "worker": 0,
                "workers": 1,
            }
        ),
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.json.encode(MESSAGES[4]),  # right message, wrong encoding
    ],
)
def test_malformed_frame_is_counted_and_dropped(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    codec = MsgpackCodec()
    with caplog.at_level(logging.DEBUG, logger="benchagent.codec"):
        assert codec.decode(data) is None
    assert codec.decode_errors == 1
    assert "malformed frame" in caplog.text


def test_truncated_frame_is_dropped() -> None:
    codec = MsgpackCodec()
    data = codec.encode(MESSAGES[2])
    for cut in range(len(data)):
        assert codec.decode(data[:cut]) is None
    assert codec.decode_errors == len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data: bytes) -> None:
    codec = MsgpackCodec()
    result = codec.decode(data)
    assert result is None or isinstance(result, Message)
    assert codec.decode_errors == (1 if result is None else 0)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_corrupted_valid_frames_never_raise(msg: Message, data: st.DataObject) -> None:
    codec = MsgpackCodec()
    frame = bytearray(codec.encode(msg))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] = data.draw(st.integers(0, 255))
    result = codec.decode(bytes(frame))
    assert result is None or isinstance(result, Message)


def test_a_snapshot_of_an_older_worker_decodes_without_attempt_or_incarnation() -> None:
    """``attempt`` and ``incarnation`` are optional: an older worker's snapshot decodes with
    their defaults (and a newer one in an older peer: msgspec ignores unknown fields)."""

    class OldSnapshot(msgspec.Struct, tag="MetricsSnapshot", tag_field="kind", kw_only=True):
        run: str
        worker: int
        seq: int
        state: str
        phase: str
        time_ns: int
        elapsed_s: float
        n_pending: int

    old = msgspec.msgpack.encode(
        OldSnapshot(
            run="r",
            worker=0,
            seq=1,
            state="LIVE",
            phase="warmup",
            time_ns=1,
            elapsed_s=0.0,
            n_pending=0,
        )
    )
    snap = MsgpackCodec().decode(old)
    assert isinstance(snap, MetricsSnapshot)
    assert (snap.attempt, snap.incarnation) == (0, "")
