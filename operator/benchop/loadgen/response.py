"""Parser of a non-streaming OpenAI response (``request.stream: false``): one JSON body.

It has the facts a :class:`~benchop.loadgen.sse.StreamParser` has, so the client treats
both alike: the body is collected as it is read (``feed``) and decoded at its end
(``close``). The first token's time is the end of the body: TTFT equals the end-to-end
latency, there are no inter-token gaps, and the output tokens are ``usage.completion_tokens``
(a body without usage is ``malformed``: its token count is unknown, never guessed).
Content is a choice's ``message.content`` (chat, reasoning and tool calls too) or ``text``;
with ``keep_text`` the answer's text (``message.content`` or ``text``) is kept in ``text``
for multi-turn replay. Counts and stamps are bounded as in the stream parser (0..2**62).

>>> p = ResponseParser(wall_offset_ns=0)
>>> p.feed(b'{"choices":[{"text":"hi","finish_reason":"length"}],', 10)
False
>>> p.feed(b'"usage":{"prompt_tokens":3,"completion_tokens":1}}', 20)
False
>>> p.close(); (p.n_tokens, p.first_ns, p.done, p.finish_reason)
(1, 20, True, 'length')
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from benchop.loadgen.sse import _Delta, _Error, _Stamp, _Usage

__all__ = ["MAX_BODY", "ResponseParser"]

MAX_BODY = 8 * 1024 * 1024
"""A longer body is abandoned as malformed (an answer of a few thousand tokens is ~100 KB)."""
_EXCERPT = 160
# The message, usage and error shapes (and the number bounds) are the stream parser's: one
# definition of what a server may send.
_Message = _Delta


class _Choice(msgspec.Struct, gc=False):
    message: _Message | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Response(msgspec.Struct, gc=False):
    choices: list[_Choice] | UnsetType = UNSET
    usage: _Usage | None = None
    error: _Error | str | None = None
    benchop_sent_ns: _Stamp | None = None


_decode = msgspec.json.Decoder(_Response).decode


class ResponseParser:
    """The facts of one non-streaming response, with :class:`StreamParser`'s attributes."""

    __slots__ = (
        "_body",
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
        self._body = bytearray()
        self._wall_offset = wall_offset_ns
        self.done = False  # decoded a whole body
        self.malformed: str | None = None
        self.error: str | None = None
        self.error_code: int | None = None
        self.finish_reason: str | None = None
        self.first_ns = -1
        self.last_ns = -1  # time of the last read
        self.itl_ns: list[int] = []
        self.n_tokens = 0  # usage.completion_tokens of a good body
        self.n_chunks = 0
        self.recv_lag_ns: list[int] = []
        self.usage_prompt: int | None = None
        self.usage_completion: int | None = None
        self.text: list[str] | None = [] if keep_text else None  # the answer's text

    def feed(self, data: bytes, t_ns: int) -> bool:
        """Collect ``data`` read at ``t_ns``; True (stop) only when the body is too long."""
        self.last_ns = t_ns
        if len(self._body) + len(data) > MAX_BODY:
            self.malformed = f"response body over {MAX_BODY} bytes"
            return True
        self._body += data
        return False

    def close(self) -> None:
        """The body ended: decode it."""
        if self.malformed is not None:
            return
        body = bytes(self._body)
        try:
            doc = _decode(body)
        except msgspec.DecodeError as exc:
            self._bad(f"undecodable response: {exc}", body)
            return
        self.n_chunks = 1
        if doc.error is not None:
            self._on_error(doc.error)
            return
        if doc.benchop_sent_ns is not None and self.last_ns >= 0:
            self.recv_lag_ns.append(self.last_ns + self._wall_offset - doc.benchop_sent_ns)
        if doc.choices is UNSET:
            self._bad("unknown response: no choices, usage or error", body)
            return
        content = False
        text = self.text
        for ch in doc.choices:
            m = ch.message
            if m is not None:
                content = content or bool(
                    m.content or m.reasoning or m.reasoning_content or m.tool_calls
                )
                if text is not None and m.content:
                    text.append(m.content)
            elif ch.text is not None:
                content = content or bool(ch.text)
                if text is not None and ch.text:
                    text.append(ch.text)
            elif ch.finish_reason is None:
                self._bad("unknown response: a choice with no message, text or finish_reason", body)
                return
            if ch.finish_reason is not None:
                self.finish_reason = ch.finish_reason
        usage = doc.usage
        if usage is None or usage.completion_tokens is None:
            self._bad("response without usage: its output tokens are unknown", body)
            return
        self.usage_prompt = usage.prompt_tokens
        self.usage_completion = usage.completion_tokens
        self.n_tokens = usage.completion_tokens if content else 0
        self.done = True
        if self.n_tokens:
            self.first_ns = self.last_ns

    def _bad(self, why: str, body: bytes) -> None:
        self.malformed = f"{why} in {body[:_EXCERPT].decode('utf-8', 'replace')!r}"

    def _on_error(self, err: _Error | str) -> None:
        if isinstance(err, str):
            self.error = err
            return
        self.error = err.message or "error in response"
        code = err.code
        if isinstance(code, int):
            self.error_code = code
        elif isinstance(code, str) and code.isascii() and code.isdigit() and len(code) <= 18:
            self.error_code = int(code)  # ASCII: "²" is a digit to isdigit, not to int
