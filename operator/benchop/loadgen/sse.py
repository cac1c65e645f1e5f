"""Byte-level parser of an OpenAI streaming response (server-sent events).

The pure core of the client's hot path. ``feed`` takes each read's complete
events, stops at ``[DONE]``, and decodes all of the read's chunks in one call
of a small typed msgspec decoder (about 10x cheaper than ``json.loads`` plus
dict lookups); the content of every chunk is decoded. A chunk counts as a
token when it carries content (chat ``delta.content``; reasoning as
``delta.reasoning`` (vLLM since late 2025) or ``delta.reasoning_content``
(DeepSeek, SGLang, llama.cpp, older vLLM); tool-call deltas ``delta.tool_calls``;
completions ``text``); the time of the read that delivered it is its arrival time, so
tokens of one read have gaps of 0 (a server that sends several tokens per chunk, as
TensorRT-LLM with speculative decoding does, gives one gap per chunk).
``usage`` is taken from whichever chunk has it (the last one, with
``stream_options.include_usage``); ``finish_reason`` from the last choice that has one.
With ``keep_text``, the answer's text (chat ``delta.content``, completions ``text``; not
reasoning or tool calls) is kept in ``text``, for multi-turn replay and for counting tokens
the server did not report.

What the parser does not understand ends the stream as ``malformed`` (the client counts
a ``malformed_stream`` failure), never a silently wrong number: an undecodable chunk, a
chunk with none of ``choices``, ``usage`` or ``error``, a choice with none of ``delta``,
``text`` or ``finish_reason``, a token count or stamp outside 0..2**62 (rather than a
number that overflows later). An ``error`` object inside the stream (vLLM, SGLang,
llama.cpp's server; a plain string from TGI) ends it with the server's message; ``done``
then stays False however the bytes were split (an error and ``[DONE]`` in one read or two).
The receive lag (mock server only: it stamps ``benchop_sent_ns``) is one value
per read: the read's time minus the stamp of its first, oldest chunk.

>>> p = StreamParser(wall_offset_ns=0)
>>> p.feed(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\\n\\n', 100)
False
>>> p.feed(b'data: {"choices":[{"delta":{"content":" there"}}]}\\n\\ndata: [DONE]\\n\\n', 250)
True
>>> p.n_tokens, p.first_ns, p.itl_ns, p.done
(2, 100, [150], True)
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

__all__ = ["StreamParser"]

# Numbers a chunk may carry: a count or a wall-clock stamp outside these is not a valid
# chunk (a bad decode, so the stream is malformed) rather than a value that would overflow
# the int64 series and arrays the request's facts go into.
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
_Stamp = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: _Count | None = None
    completion_tokens: _Count | None = None


class _Error(msgspec.Struct, gc=False):
    message: str = ""
    code: int | str | None = None


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] | UnsetType = UNSET
    usage: _Usage | None = None
    error: _Error | str | None = None
    benchop_sent_ns: _Stamp | None = None


_decode = msgspec.json.Decoder(_Chunk).decode
_decode_many = msgspec.json.Decoder(list[_Chunk]).decode
_DecodeError = msgspec.DecodeError
_DONE_EVENT = b"data: [DONE]\n\n"
_SEP = b",       "  # as long as b"\n\ndata: ": a same-length replace is the cheapest
_EXCERPT = 160  # bytes of a read quoted in a malformed-stream message


def _zeros(n: int) -> list[int]:
    return [0] * n


class StreamParser:
    """Accumulates the timing and token facts of one streamed response.

    Times are the caller's monotonic nanoseconds (``time.perf_counter_ns``);
    ``wall_offset_ns`` converts them to wall-clock time for the receive lag
    against the mock server's ``benchop_sent_ns`` stamp.
    """

    __slots__ = (
        "_buf",
        "_wall_offset",
        "done",
        "error",
        "error_code",
        "finish_reason",
        "first_ns",
        "itl_ns",
        "last_ns",
        "malformed",
        "n_chunks",
        "n_tokens",
        "recv_lag_ns",
        "text",
        "usage_completion",
        "usage_prompt",
    )

    def __init__(self, wall_offset_ns: int, keep_text: bool = False) -> None:
        self._buf = b""
        self._wall_offset = wall_offset_ns
        self.done = False  # saw data: [DONE]
        self.malformed: str | None = None  # why the stream could not be parsed
        self.error: str | None = None  # an error object sent inside the stream
        self.error_code: int | None = None
        self.first_ns = -1  # arrival of the first token, -1 before it
        self.last_ns = -1
        self.itl_ns: list[int] = []
        self.n_tokens = 0  # chunks with content
        self.n_chunks = 0  # JSON chunks decoded (any content)
        self.finish_reason: str | None = None  # of the last choice that had one
        self.recv_lag_ns: list[int] = []
        self.usage_prompt: int | None = None
        self.usage_completion: int | None = None
        self.text: list[str] | None = [] if keep_text else None  # the answer's pieces

    def feed(self, data: bytes, t_ns: int) -> bool:
        """Parse ``data`` received at ``t_ns``; True when reading should stop.

        Fast path (what OpenAI-compatible servers send): the read's complete
        events are all ``data: {json}\\n\\n``; they are turned into one JSON
        array in a single pass (each ``\\n\\ndata: `` becomes ``,`` plus
        padding; raw newlines cannot occur inside JSON strings) and decoded in
        one call. Anything else (comments, ``event:`` lines, CRLF, ``[DONE]``
        before the end, a bad chunk) fails that decode or the framing check
        and takes the line-by-line path. A read's tokens share its time.
        """
        buf = self._buf + data if self._buf else data
        end = buf.rfind(b"\n\n") + 2
        if end == 1:  # no complete LF-framed event: maybe CRLF lines or a partial event
            end = buf.rfind(b"\n") + 1
            if end == 0:
                self._buf = buf
                return False
        if end != len(buf):
            self._buf = buf[end:]
            buf = buf[:end]
        elif self._buf:
            self._buf = b""
        stop = False
        if buf.endswith(_DONE_EVENT):
            stop = self.done = True
            buf = buf[: -len(_DONE_EVENT)]
            if not buf:
                return True
        if buf.startswith(b"data: "):
            try:
                chunks = _decode_many(b"[" + buf[6:-2].replace(b"\n\ndata: ", _SEP) + b"]")
            except _DecodeError:
                pass
            else:
                return self._on_chunks(chunks, t_ns, buf) or stop
        return self._by_lines(buf, t_ns) or stop

    def _by_lines(self, buf: bytes, t_ns: int) -> bool:
        """The general path: any line ending, comments, other fields, ``[DONE]`` anywhere."""
        payloads = [line[5:].strip() for line in buf.split(b"\n") if line.startswith(b"data:")]
        stop = False
        if b"[DONE]" in payloads:
            payloads = payloads[: payloads.index(b"[DONE]")]
            self.done = stop = True
        if not payloads:
            return stop
        try:
            chunks = _decode_many(b"[" + b",".join(payloads) + b"]")
        except _DecodeError:
            return self._one_by_one(payloads, t_ns)
        return self._on_chunks(chunks, t_ns, buf) or stop

    def _one_by_one(self, payloads: list[bytes], t_ns: int) -> bool:
        """The slow path after a failed batch decode: find the bad chunk."""
        self.done = False
        for payload in payloads:
            try:
                chunk = _decode(payload)
            except _DecodeError as exc:
                return self._malformed(f"undecodable chunk: {exc}", payload)
            if self._on_chunks([chunk], t_ns, payload):
                return True
        # joined they failed, alone they did not
        return self._malformed("undecodable stream", b"\n".join(payloads))

    def _on_chunks(self, chunks: list[_Chunk], t_ns: int, raw: bytes) -> bool:
        """Account the chunks of one read (received at ``t_ns``; ``raw`` only for messages);
        True to stop."""
        n = 0
        if chunks and (sent := chunks[0].benchop_sent_ns) is not None:
            # one receive lag per read, from its first (oldest) chunk: the read's worst
            self.recv_lag_ns.append(t_ns + self._wall_offset - sent)
        self.n_chunks += len(chunks)
        unset = UNSET
        finish = None
        for chunk in chunks:
            choices = chunk.choices
            if chunk.error is not None:
                self._count(n, t_ns)
                return self._on_error(chunk.error)
            if choices is unset:
                if chunk.usage is None:
                    self._count(n, t_ns)
                    return self._malformed("unknown chunk: no choices, usage or error", raw)
                choices = []
            for ch in choices:
                d = ch.delta
                if d is not None:
                    if d.content or d.reasoning or d.reasoning_content or d.tool_calls:
                        n += 1
                elif ch.text:
                    n += 1
                elif ch.text is None and ch.finish_reason is None:
                    self._count(n, t_ns)
                    return self._malformed(
                        "unknown chunk: a choice with no delta, text or finish_reason", raw
                    )
                if ch.finish_reason is not None:
                    finish = ch.finish_reason
            if self.text is not None:
                self._keep(choices)
            usage = chunk.usage
            if usage is not None:
                self.usage_prompt = usage.prompt_tokens
                self.usage_completion = usage.completion_tokens
        if finish is not None:
            self.finish_reason = finish
        self._count(n, t_ns)
        return False

    def _malformed(self, why: str, raw: bytes) -> bool:
        excerpt = raw[:_EXCERPT].decode("utf-8", "replace")
        self.malformed = f"{why} in {excerpt!r}"
        self.done = False
        return True

    def _keep(self, choices: list[_Choice]) -> None:
        text = self.text
        assert text is not None
        for ch in choices:
            piece = ch.delta.content if ch.delta is not None else ch.text
            if piece:
                text.append(piece)

    def _count(self, n: int, t_ns: int) -> None:
        """``n`` tokens arrived at ``t_ns``: one gap from the last token, then zeros."""
        if n == 0:
            return
        itl = self.itl_ns
        if self.first_ns < 0:
            self.first_ns = t_ns
        else:
            itl.append(t_ns - self.last_ns)
        if n > 1:
            itl += _zeros(n - 1)
        self.last_ns = t_ns
        self.n_tokens += n

    def _on_error(self, err: _Error | str) -> bool:
        self.done = False  # an error is the outcome, whether [DONE] came in the same read
        if isinstance(err, str):
            self.error = err
        else:
            self.error = err.message or "error in stream"
            code = err.code
            if isinstance(code, int):
                self.error_code = code
            elif isinstance(code, str) and code.isascii() and code.isdigit() and len(code) <= 18:
                self.error_code = int(code)  # ASCII: "²" is a digit to isdigit, not to int
        return True

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete line (a partial line)."""
        return self._buf
