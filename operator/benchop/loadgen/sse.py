"""Byte-level parser of an OpenAI streaming response (server-sent events).

The pure core of the client's hot path. ``feed`` scans the received bytes for
``data:`` lines, stops at ``[DONE]``, and decodes each chunk with a small typed
msgspec decoder (about 10x cheaper than ``json.loads`` plus dict lookups). A
chunk counts as a token when it carries content (chat ``delta.content`` or
``delta.reasoning_content``, completions ``text``); the time of the read that
delivered it is its arrival time. ``usage`` is taken from whichever chunk has
it (the last one, with ``stream_options.include_usage``).

>>> p = StreamParser(wall_offset_ns=0)
>>> p.feed(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\\n\\n', 100)
False
>>> p.feed(b'data: {"choices":[{"delta":{"content":" there"}}]}\\n\\ndata: [DONE]\\n\\n', 250)
True
>>> p.n_tokens, p.first_ns, p.itl_ns, p.done
(2, 100, [150], True)
"""

from __future__ import annotations

import msgspec

__all__ = ["StreamParser"]


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Error(msgspec.Struct):
    message: str = ""
    code: int | str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _Error | str | None = None
    benchop_sent_ns: int | None = None


_decode = msgspec.json.Decoder(_Chunk).decode
_decode_many = msgspec.json.Decoder(list[_Chunk]).decode
_DecodeError = msgspec.DecodeError


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
        "first_ns",
        "itl_ns",
        "last_ns",
        "malformed",
        "n_tokens",
        "recv_lag_ns",
        "usage_completion",
        "usage_prompt",
    )

    def __init__(self, wall_offset_ns: int) -> None:
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
        self.recv_lag_ns: list[int] = []
        self.usage_prompt: int | None = None
        self.usage_completion: int | None = None

    def feed(self, data: bytes, t_ns: int) -> bool:
        """Parse ``data`` received at ``t_ns``; True when reading should stop.

        Every complete ``data:`` line of the read is decoded in one call (the
        payloads joined into a JSON array); a read's tokens share its time.
        """
        buf = self._buf + data if self._buf else data
        end = buf.rfind(b"\n") + 1
        if end == 0:
            self._buf = buf
            return False
        self._buf = buf[end:]
        payloads = [
            line[5:].strip() for line in buf[:end].split(b"\n") if line.startswith(b"data:")
        ]
        if not payloads:
            return False
        stop = False
        if payloads[-1] == b"[DONE]" or b"[DONE]" in payloads:
            payloads = payloads[: payloads.index(b"[DONE]")]
            self.done = stop = True
        if not payloads:
            return stop
        try:
            if len(payloads) == 1:  # one token per read (a server pacing its tokens)
                return self._on_chunk(_decode(payloads[0]), t_ns) or stop
            chunks = _decode_many(b"[" + b",".join(payloads) + b"]")
        except _DecodeError:
            return self._one_by_one(payloads, t_ns)
        for chunk in chunks:
            if self._on_chunk(chunk, t_ns):
                return True
        return stop

    def _one_by_one(self, payloads: list[bytes], t_ns: int) -> bool:
        """The slow path after a failed batch decode: find the bad chunk."""
        self.done = False
        for payload in payloads:
            try:
                chunk = _decode(payload)
            except _DecodeError as exc:
                self.malformed = f"undecodable chunk: {exc}"
                return True
            if self._on_chunk(chunk, t_ns):
                return True
        self.malformed = "undecodable stream"  # joined they failed, alone they did not
        return True

    def _on_chunk(self, chunk: _Chunk, t_ns: int) -> bool:
        if chunk.error is not None:
            err = chunk.error
            if isinstance(err, str):
                self.error = err
            else:
                self.error = err.message or "error in stream"
                code = err.code
                if isinstance(code, int):
                    self.error_code = code
                elif isinstance(code, str) and code.isdigit():
                    self.error_code = int(code)
            return True
        for ch in chunk.choices:
            d = ch.delta
            content = (d.content or d.reasoning_content) if d is not None else ch.text
            if content:
                if self.first_ns < 0:
                    self.first_ns = t_ns
                else:
                    self.itl_ns.append(t_ns - self.last_ns)
                self.last_ns = t_ns
                self.n_tokens += 1
        if chunk.benchop_sent_ns is not None:
            self.recv_lag_ns.append(t_ns + self._wall_offset - chunk.benchop_sent_ns)
        if chunk.usage is not None:
            self.usage_prompt = chunk.usage.prompt_tokens
            self.usage_completion = chunk.usage.completion_tokens
        return False

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete line (a partial line)."""
        return self._buf
