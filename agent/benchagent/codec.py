"""The one codec of benchop's wire: :data:`benchagent.wire.Message` <-> msgpack bytes.

Every reader decodes through a :class:`Codec`. A malformed frame is counted in
``decode_errors``, logged at debug level and dropped (``decode`` returns
``None``); it never raises into a reader loop.

    codec = MsgpackCodec()
    data = codec.encode(msg)                 # bytes for one ZMQ frame
    assert codec.decode(data) == msg
    assert codec.decode(b"garbage") is None  # and codec.decode_errors == 1
"""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec

from benchagent.wire import Message

log = logging.getLogger(__name__)


class Codec(Protocol):
    """Encodes messages to bytes and decodes bytes to messages, never raising on bad input."""

    decode_errors: int

    def encode(self, msg: Message) -> bytes:
        """Serialize one message into one frame."""
        ...

    def decode(self, data: bytes) -> Message | None:
        """The message in ``data``, or ``None`` (after ``on_decode_error``) when malformed."""
        ...

    def on_decode_error(self, data: bytes, exc: Exception) -> None:
        """Account for one malformed frame (count it, log it); must not raise."""
        ...


class MsgpackCodec:
    """msgspec msgpack over the ``Message`` tagged union (the ``kind`` field picks the struct).

    Malformed input is what msgspec raises for bad bytes: ``DecodeError``
    (including ``ValidationError``) and ``ValueError`` (msgspec raises
    ``UnicodeDecodeError`` for invalid UTF-8 in a ``kind`` tag). Anything else
    is a bug and propagates.
    """

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)
        self.decode_errors = 0

    def encode(self, msg: Message) -> bytes:
        return self._encoder.encode(msg)

    def decode(self, data: bytes) -> Message | None:
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, ValueError) as exc:
            self.on_decode_error(data, exc)
            return None

    def on_decode_error(self, data: bytes, exc: Exception) -> None:
        self.decode_errors += 1
        log.debug("dropped malformed frame (%d bytes): %s", len(data), exc)
