"""Fuzzing the wire codec and the SSE parser (pure targets) within the CI budget."""

from __future__ import annotations

import fuzzstrategies as fs
from budget import budget
from fuzztargets import codec, sse
from hypothesis import given
from hypothesis import strategies as st


@budget(400)
@given(st.binary(max_size=256))
def test_codec_random_bytes(data: bytes) -> None:
    codec(data)


@budget(600)
@given(fs.frames())
def test_codec_broken_messages(data: bytes) -> None:
    codec(data)


@budget(300)
@given(st.binary(max_size=256))
def test_sse_random_bytes(data: bytes) -> None:
    sse(data)


@budget(600)
@given(fs.sse_inputs())
def test_sse_hostile_streams(data: bytes) -> None:
    sse(data)
