"""The non-streaming parser (``request.stream: false``): the answer's text for multi-turn
replay, and the bounds and error codes it shares with the stream parser."""

from __future__ import annotations

import json

import pytest

from benchop.loadgen.response import ResponseParser
from benchop.loadgen.sse import StreamParser


def parse(doc: object, *, keep_text: bool = False) -> ResponseParser:
    p = ResponseParser(wall_offset_ns=0, keep_text=keep_text)
    body = json.dumps(doc).encode()
    for i in range(0, len(body), 7):  # in several reads, as it arrives
        assert not p.feed(body[i : i + 7], 10 + i)
    p.close()
    return p


USAGE = {"prompt_tokens": 3, "completion_tokens": 2}


@pytest.mark.parametrize(
    ("choice", "text"),
    [
        ({"message": {"role": "assistant", "content": "Hello there"}}, "Hello there"),
        ({"text": " a completion"}, " a completion"),
        # reasoning and tool calls are content (tokens), not the answer's text
        ({"message": {"reasoning_content": "hmm", "content": "yes"}}, "yes"),
        ({"message": {"tool_calls": [{"id": "c1"}]}}, ""),
    ],
)
def test_the_answers_text_is_kept_when_asked(choice: dict[str, object], text: str) -> None:
    doc = {"choices": [{**choice, "finish_reason": "stop"}], "usage": USAGE}
    kept = parse(doc, keep_text=True)
    assert kept.done and kept.malformed is None and kept.n_tokens == 2
    assert kept.text is not None and "".join(kept.text) == text
    assert parse(doc).text is None  # not asked: nothing kept


@pytest.mark.parametrize(
    "doc",
    [
        {
            "choices": [{"text": "a", "finish_reason": "stop"}],
            "usage": {"completion_tokens": 2**70},
        },
        {"choices": [{"text": "a", "finish_reason": "stop"}], "usage": {"completion_tokens": -1}},
        {"choices": [{"text": "a"}], "usage": {"prompt_tokens": 2**62 + 1, "completion_tokens": 1}},
        {"choices": [{"text": "a"}], "usage": USAGE, "benchop_sent_ns": 2**63},
    ],
)
def test_counts_and_stamps_outside_0_to_2_62_are_malformed_as_in_a_stream(
    doc: dict[str, object],
) -> None:
    p = parse(doc)
    assert p.malformed is not None and not p.done and p.usage_completion is None
    # the stream parser says the same of the same numbers in a chunk
    s = StreamParser(wall_offset_ns=0)
    s.feed(b"data: " + json.dumps(doc).encode() + b"\n\ndata: [DONE]\n\n", 1)
    assert s.malformed is not None


@pytest.mark.parametrize(
    ("code", "want"), [(429, 429), ("503", 503), ("\u00b2", None), ("1" * 40, None), (None, None)]
)
def test_an_error_code_is_read_from_ascii_digits_only(code: object, want: int | None) -> None:
    p = parse({"error": {"message": "busy", "code": code}})
    assert (p.error, p.error_code) == ("busy", want)
