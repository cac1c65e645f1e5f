"""The byte-level SSE parser: tokens, timing, usage, [DONE], malformed and error chunks."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from benchop.loadgen.sse import StreamParser


def chat(content: str | None, **extra: object) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": content}}], **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'


def test_tokens_itl_usage_and_done() -> None:
    p = StreamParser(wall_offset_ns=0)
    assert not p.feed(chat(None, role="assistant") + chat(""), 5)  # role chunk: no token
    assert not p.feed(chat("a"), 10)
    assert not p.feed(chat("b") + chat("c"), 25)  # two tokens in one read share its time
    assert p.feed(USAGE + DONE + b"ignored after done", 40)
    assert (p.n_tokens, p.first_ns, p.last_ns, p.itl_ns) == (3, 10, 25, [15, 0])
    assert (p.usage_prompt, p.usage_completion, p.done) == (7, 3, True)
    assert p.malformed is None and p.error is None


def test_completions_text_reasoning_content_crlf_and_comments() -> None:
    p = StreamParser(wall_offset_ns=0)
    data = (
        b": keep-alive comment\r\n\r\n"
        b'data:{"choices":[{"text":"x"}]}\r\n\r\n'
        b'event: message\r\ndata: {"choices":[{"delta":{"reasoning_content":"think"}}]}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
    )
    assert p.feed(data, 1)
    assert p.n_tokens == 2 and p.done


def test_receive_lag_uses_wall_offset() -> None:
    p = StreamParser(wall_offset_ns=1_000)
    p.feed(chat("a", benchop_sent_ns=900), 50)  # wall = 50 + 1000
    assert p.recv_lag_ns == [150]


def test_undecodable_chunk_stops_as_malformed() -> None:
    p = StreamParser(wall_offset_ns=0)
    assert p.feed(chat("a") + b'data: {"choices":[{"delta":{"content":"tru\n\n', 3)
    assert p.malformed is not None and p.n_tokens == 1 and not p.done


def test_error_object_in_stream() -> None:
    p = StreamParser(wall_offset_ns=0)
    assert p.feed(b'data: {"error":{"message":"overloaded","code":503}}\n\n', 1)
    assert (p.error, p.error_code) == ("overloaded", 503)
    q = StreamParser(wall_offset_ns=0)
    assert q.feed(b'data: {"error":{"message":"bad","code":"400"}}\n\n', 1)
    assert q.error_code == 400


STREAM = chat(None, role="assistant") + b"".join(chat(f" t{i}") for i in range(6)) + USAGE + DONE


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_any_split_into_reads_gives_the_same_tokens(cuts: list[int]) -> None:
    edges = [0, *sorted(set(cuts)), len(STREAM)]
    p = StreamParser(wall_offset_ns=0)
    stopped = False
    for t, (a, b) in enumerate(itertools.pairwise(edges)):
        stopped = p.feed(STREAM[a:b], t)
        if stopped:  # only the blank line after [DONE] may be left unread
            assert b >= len(STREAM) - 1
            break
    assert stopped and p.done
    assert p.n_tokens == 6 and len(p.itl_ns) == 5
    assert p.usage_completion == 3


def test_fast_path_equals_line_path() -> None:
    """A whole LF-framed body (one decode) and the same body with CRLF framing (line by
    line) give the same tokens, gaps, usage and lag (one per read, from its oldest chunk)."""
    body = b"".join(chat(f" t{i}", benchop_sent_ns=10 + i) for i in range(5)) + USAGE + DONE
    fast, slow = StreamParser(wall_offset_ns=0), StreamParser(wall_offset_ns=0)
    assert fast.feed(body, 100) and slow.feed(body.replace(b"\n", b"\r\n"), 100)
    for p in (fast, slow):
        assert (p.n_tokens, p.itl_ns, p.usage_completion, p.done) == (5, [0, 0, 0, 0], 3, True)
        assert p.recv_lag_ns == [90]


def test_done_in_the_middle_stops_there() -> None:
    p = StreamParser(wall_offset_ns=0)
    assert p.feed(chat("a") + DONE + chat("b"), 1)
    assert p.n_tokens == 1 and p.done


def test_bad_chunk_among_good_ones_in_one_read() -> None:
    p = StreamParser(wall_offset_ns=0)
    assert p.feed(chat("a") + b"data: {not json}\n\n" + chat("b"), 1)
    assert p.n_tokens == 1 and p.malformed is not None and not p.done


def test_every_single_cut_gives_the_same_result() -> None:
    """Exhaustive over one read boundary (e.g. between the two newlines before [DONE])."""
    for cut in range(1, len(STREAM)):
        p = StreamParser(wall_offset_ns=0)
        stopped = p.feed(STREAM[:cut], 0) or p.feed(STREAM[cut:], 1)
        assert stopped and p.done and p.n_tokens == 6, cut
        assert (p.usage_prompt, len(p.itl_ns), p.malformed) == (7, 5, None), cut
