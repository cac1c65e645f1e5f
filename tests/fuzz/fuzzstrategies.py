"""Hypothesis strategies that write inputs for the targets of :mod:`fuzztargets`.

Random bytes rarely get past a parser's first check, so each target also gets inputs built
from what the surface expects, then broken: wire messages of every kind with any values their
types allow (ints past int64, NaN, empty strings), re-encoded with a field dropped or retyped,
cut short or with a byte changed; SSE streams of realistic chunks with hostile values
(usage counts past int64, error codes that are digits only to ``str.isdigit``); HTTP answers
with every framing, some of them lying. Every strategy returns the exact ``bytes`` a target
takes, so a failing example is also a corpus file.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
from hypothesis import strategies as st

from benchagent.wire import Message

# --------------------------------------------------------------------------- values

WIDE_INTS = st.one_of(
    st.integers(-3, 1100),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, -(2**63), -1, 0]),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
TEXT = st.text(max_size=12)


def json_values(big_ints: bool = True) -> st.SearchStrategy[Any]:
    ints = st.one_of(st.integers(-5, 5), st.integers(-(2**70), 2**70)) if big_ints else WIDE_INTS
    leaves = st.one_of(
        st.none(), st.booleans(), ints, st.floats(allow_nan=False, allow_infinity=False), TEXT
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)
        ),
        max_leaves=8,
    )


def _for_type(t: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """Any value a msgspec type admits (and, for literals, sometimes one it does not)."""
    mi = msgspec.inspect
    if isinstance(t, mi.IntType):
        return WIDE_INTS
    if isinstance(t, mi.FloatType):
        return FLOATS
    if isinstance(t, mi.StrType):
        return TEXT
    if isinstance(t, mi.BytesType):
        return st.one_of(st.binary(max_size=40), st.binary(min_size=8, max_size=8))
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(list(t.values))
    if isinstance(t, mi.UnionType):
        return st.one_of(*(_for_type(x) for x in t.types))
    if isinstance(t, mi.ListType):
        return st.lists(_for_type(t.item_type), max_size=3)
    if isinstance(t, mi.DictType):
        return st.dictionaries(_for_type(t.key_type), _for_type(t.value_type), max_size=3)
    if isinstance(t, mi.StructType):
        return _struct(t)
    if isinstance(t, mi.AnyType):
        return json_values()
    raise TypeError(f"no strategy for {t}")


def _struct(t: msgspec.inspect.StructType) -> st.SearchStrategy[dict[str, Any]]:
    """A struct as the map msgpack carries (its tag included), fields within their types
    but not within the ranges a decode checks: the decoder, not the strategy, judges."""
    fields = {f.encode_name: _for_type(f.type) for f in t.fields}
    if t.tag_field is not None:
        fields[t.tag_field] = st.just(t.tag)
    return st.fixed_dictionaries(fields)


def _encode(doc: Any) -> bytes:
    try:
        return msgspec.msgpack.encode(doc)
    except (OverflowError, TypeError):  # an int msgpack cannot hold
        return b""


_UNION = msgspec.inspect.type_info(Message)
assert isinstance(_UNION, msgspec.inspect.UnionType)
MESSAGE_TYPES = {
    x.cls.__name__: x for x in _UNION.types if isinstance(x, msgspec.inspect.StructType)
}


def messages(kind: str | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Wire messages (of ``kind``, else of any kind) with any values their types allow, as
    msgpack-ready maps."""
    if kind is not None:
        return _struct(MESSAGE_TYPES[kind])
    return st.one_of(*(_struct(t) for t in MESSAGE_TYPES.values()))


# --------------------------------------------------------------------------- frames


@st.composite
def broken(draw: st.DrawFn, frame: bytes) -> bytes:
    """``frame`` cut short, with bytes changed or inserted, or left whole."""
    how = draw(st.sampled_from(["whole", "whole", "cut", "flip", "insert"]))
    if how == "whole" or not frame:
        return frame
    pos = draw(st.integers(0, len(frame) - 1))
    if how == "cut":
        return frame[:pos]
    if how == "flip":
        return frame[:pos] + bytes([draw(st.integers(0, 255))]) + frame[pos + 1 :]
    return frame[:pos] + draw(st.binary(min_size=1, max_size=4)) + frame[pos:]


@st.composite
def retyped(draw: st.DrawFn, msg: Any) -> bytes:
    """``msg`` as a msgpack map with one field dropped, retyped or added."""
    doc = dict(msg)
    key = draw(st.sampled_from(sorted(doc)))
    how = draw(st.sampled_from(["drop", "retype", "add"]))
    if how == "drop":
        doc.pop(key)
    elif how == "retype":
        doc[key] = draw(json_values(big_ints=False))
    else:
        doc[draw(TEXT)] = draw(json_values(big_ints=False))
    return _encode(doc)


def frames(kind: str | None = None) -> st.SearchStrategy[bytes]:
    """One ZMQ frame: a message (of ``kind``) encoded, broken, retyped; or random bytes."""
    return st.one_of(
        messages(kind).map(_encode).flatmap(broken),
        messages(kind).flatmap(retyped),
        st.binary(max_size=64),
    )


def multipart(kind: str | None = None, envelope: bool = True) -> st.SearchStrategy[bytes]:
    """Several multipart messages, as the ``list[list[bytes]]`` msgpack the ZMQ targets read."""
    one = (
        st.tuples(st.lists(st.binary(max_size=8), max_size=2), frames(kind)).map(
            lambda t: [*t[0], t[1]]
        )
        if envelope
        else st.lists(frames(kind), min_size=1, max_size=3)
    )
    return st.lists(one, min_size=1, max_size=6).map(msgspec.msgpack.encode)


@st.composite
def snapshot_frames(draw: st.DrawFn) -> bytes:
    """Frames for the snapshot collector: mostly well-formed MetricsSnapshots of the accepted
    run ``ns.r`` with hostile contents, plus the other kinds of frame."""
    base = MESSAGE_TYPES["MetricsSnapshot"]
    snaps = st.builds(
        lambda s, w: {**s, "run": "ns.r", "worker": w},
        _struct(base),
        st.one_of(st.integers(0, 3), WIDE_INTS),
    )
    one = st.one_of(snaps.map(_encode), snaps.map(_encode), frames())
    msgs = draw(st.lists(st.lists(one, min_size=1, max_size=2), min_size=1, max_size=4))
    return msgspec.msgpack.encode(msgs)


# --------------------------------------------------------------------------- SSE


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four: a chunk with one wrong-typed field is undecodable, and
    the hostile values must get past the decode to reach the code that uses them."""
    return st.one_of(good, good, good, bad)


COUNTS = st.one_of(st.integers(0, 4096), WIDE_INTS, st.integers(-(2**70), 2**70))
USAGE = st.fixed_dictionaries(
    {},
    optional={
        "prompt_tokens": mostly(COUNTS, json_values()),
        "completion_tokens": mostly(COUNTS, json_values()),
    },
)
ERROR = st.one_of(
    TEXT,
    st.fixed_dictionaries(
        {},
        optional={
            "message": mostly(TEXT, json_values()),
            "code": mostly(
                st.one_of(
                    st.integers(-1000, 1000),
                    st.integers(-(2**70), 2**70),
                    st.text("0123456789\u00b2\u00b3\u00b9\u0663\u07c0", max_size=30),
                    st.text("0123456789", min_size=4000, max_size=5000),
                ),
                json_values(),
            ),
        },
    ),
)
DELTA = st.fixed_dictionaries(
    {},
    optional={
        "content": st.one_of(st.none(), TEXT),
        "reasoning": st.one_of(st.none(), TEXT),
        "reasoning_content": mostly(st.one_of(st.none(), TEXT), json_values()),
        "role": st.just("assistant"),
    },
)
CHOICE = st.fixed_dictionaries(
    {}, optional={"delta": mostly(DELTA, json_values()), "text": st.one_of(TEXT, st.none())}
)
CHUNK = st.fixed_dictionaries(
    {},
    optional={
        "choices": mostly(st.lists(CHOICE, max_size=3), json_values()),
        "usage": st.one_of(USAGE, st.none()),
        "error": ERROR,
        "benchop_sent_ns": st.one_of(
            st.integers(1_699_999_999_000_000_000, 1_700_000_001_000_000_000),
            st.integers(-(2**66), 2**66),
        ),
    },
)


@st.composite
def sse_event(draw: st.DrawFn) -> bytes:
    nl = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"]))
    kind = draw(
        st.sampled_from(["chunk", "chunk", "chunk", "done", "comment", "event", "junk", "bad"])
    )
    if kind == "chunk":
        body = json.dumps(draw(CHUNK), ensure_ascii=draw(st.booleans())).encode()
        sep = draw(st.sampled_from([b"data: ", b"data:", b"data:  "]))
        return sep + body + nl + nl
    if kind == "done":
        return b"data: [DONE]" + nl + nl
    if kind == "comment":
        return b": " + draw(TEXT).encode() + nl + nl
    if kind == "event":
        return b"event: " + draw(TEXT).encode() + nl
    if kind == "bad":  # a chunk cut or with a changed byte
        body = json.dumps(draw(CHUNK)).encode()
        return b"data: " + draw(broken(body)) + nl + nl
    return draw(st.binary(max_size=16))


def sse_streams() -> st.SearchStrategy[bytes]:
    """An SSE body (no cut byte)."""
    return st.lists(sse_event(), max_size=8).map(b"".join)


def sse_inputs() -> st.SearchStrategy[bytes]:
    """Inputs of the ``sse`` target: a cut seed byte, then a stream."""
    return st.tuples(st.integers(0, 255), sse_streams()).map(lambda t: bytes([t[0]]) + t[1])


# --------------------------------------------------------------------------- HTTP

STATUS = st.one_of(
    st.sampled_from([200, 200, 200, 400, 404, 429, 500, 503, 204, 304, 101, 100, 302]),
    st.integers(0, 999),
)


def _chunked(body: bytes, cuts: list[int], lie: bool) -> bytes:
    out = b""
    edges = [0, *sorted({c for c in cuts if 0 < c < len(body)}), len(body)]
    for a, b in itertools.pairwise(edges):
        size = b - a + (1 if lie else 0)
        out += b"%x\r\n" % size + body[a:b] + b"\r\n"
    return out + b"0\r\n\r\n"


@st.composite
def http_answers(draw: st.DrawFn) -> bytes:
    """Inputs of the ``http`` target: a flags byte (reads, close), then a server's answer."""
    body = draw(st.one_of(sse_streams(), sse_streams(), st.binary(max_size=64)))
    status = draw(STATUS)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTP/1.1"]))
    lines = [version + b" %d " % status + draw(st.sampled_from([b"OK", b"", b"X"]))]
    ctype = draw(
        st.sampled_from(
            [b"text/event-stream", b"text/event-stream; charset=utf-8", b"application/json", None]
        )
    )
    if ctype is not None:
        lines.append(b"Content-Type: " + ctype)
    framing = draw(st.sampled_from(["length", "chunked", "close", "lying-length", "lying-chunk"]))
    if framing in ("length", "lying-length"):
        n = len(body) + (draw(st.integers(-5, 5)) if framing == "lying-length" else 0)
        lines.append(b"Content-Length: %d" % n)
        payload = body
    elif framing in ("chunked", "lying-chunk"):
        lines.append(b"Transfer-Encoding: chunked")
        cuts = draw(st.lists(st.integers(0, max(len(body), 1)), max_size=4))
        payload = _chunked(body, cuts, lie=framing == "lying-chunk")
    else:
        payload = body
    for extra in draw(
        st.lists(
            st.sampled_from(
                [b"Connection: close", b"Connection: keep-alive", b"X-A: b", b"Content-Length: 3"]
            ),
            max_size=2,
        )
    ):
        lines.append(extra)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if draw(st.integers(0, 9)) == 0:
        head = b"HTTP/1.1 100 Continue\r\n\r\n" + head
    answer = head + payload
    if draw(st.integers(0, 5)) == 0:
        answer = draw(broken(answer))
    flags = draw(st.integers(0, 255))
    return bytes([flags]) + answer
