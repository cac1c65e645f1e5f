"""Datasets of prompts: ShareGPT JSON and JSONL rows, read into conversations; row order.

Formats (``spec.workload.dataset.format``):

- ``jsonl``: one JSON object per line (blank lines skipped), ``{"prompt": "..."}`` or
  ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}``, with
  an optional ``"outputTokens": n`` (the request's max_tokens); other keys are ignored.
  A ``prompt`` row is one user turn. A ``messages`` row is a conversation: its user
  messages are the turns, the assistant message after a user message is that turn's
  reference answer (its length is the turn's output length when nothing else sets one).
- ``sharegpt``: a JSON array of ``{"conversations": [{"from": "human" | "gpt" | "system",
  "value": "..."}, ...]}`` (``user``/``assistant`` and ``chatgpt``/``bing``/``bard`` are
  read as human/gpt; other keys are ignored). A row without a human turn is skipped.

A bad row (not JSON, neither ``prompt`` nor ``messages``, an unknown role) is an error that
names the file and the line (JSONL) or the position (ShareGPT): a dataset is checked before
any request is sent, never half-used.

Order (:class:`RowOrder`): the run's order of the rows is file order (``sequential``) or a
permutation drawn from the run's seed (``random``), a new one for each pass over the rows;
worker ``w`` of ``W`` takes entries ``w, w + W, w + 2W, ...`` of that order. So the rows
are dealt round-robin to the workers, every worker's sequence is fixed by the seed, and
together the workers send every row once per pass.

    rows = load_dataset(Path("data/chat.jsonl"), "jsonl", limit=100)
    order = RowOrder(len(rows), "random", seed=7, worker=0, workers=2)
    first = rows[order.next()]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from benchop.loadgen.lengths import rng_for

__all__ = ["Conversation", "DatasetError", "RowOrder", "Turn", "load_dataset", "parse_jsonl"]

_SHUFFLE = 0x5348_5546  # key element of the row permutations: "SHUF"


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file and the row."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One user message and the dataset's reply to it (None when it has none)."""

    user: str
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    """One row: an optional system prompt and one or more turns.

    ``row`` is the row's position in the file (0-based, blank lines not counted);
    ``single`` is the turn a single-turn run sends (with the turns before it and their
    reference answers as context): the last for JSONL, the first for ShareGPT.
    """

    row: int
    system: str | None
    turns: tuple[Turn, ...]
    output_tokens: int | None = None
    single: int = 0


# --------------------------------------------------------------------------- JSONL


class _Part(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class _Message(msgspec.Struct):
    role: str
    content: str | list[_Part] | None = None


class _Row(msgspec.Struct, rename={"output_tokens": "outputTokens"}):
    prompt: str | None = None
    messages: list[_Message] | None = None
    output_tokens: int | None = None


_decode_row = msgspec.json.Decoder(_Row).decode
_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


def _text(content: str | list[_Part] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p.text or "" for p in content if p.type == "text")


def _conversation(row: int, pairs: list[tuple[str, str]], single_last: bool) -> Conversation:
    """A conversation of (role, text) pairs; roles already mapped to system/user/assistant."""
    systems = [t for r, t in pairs if r == "system"]
    turns: list[Turn] = []
    for role, text in pairs:
        if role == "user":
            turns.append(Turn(text))
        elif role == "assistant" and turns and turns[-1].answer is None:
            turns[-1] = Turn(turns[-1].user, text)
        # an assistant message before any user turn, or a second one in a row: context only
    return Conversation(
        row=row,
        system="\n".join(systems) if systems else None,
        turns=tuple(turns),
        single=len(turns) - 1 if single_last else 0,
    )


def parse_jsonl(lines: Iterator[str], where: str, limit: int | None = None) -> list[Conversation]:
    """Rows of a JSONL dataset (``where`` names it in errors); at most ``limit``."""
    out: list[Conversation] = []
    row = 0
    for lineno, line in enumerate(lines, 1):
        if limit is not None and len(out) >= limit:
            break
        if not line.strip():
            continue
        try:
            r = _decode_row(line)
        except msgspec.DecodeError as exc:
            raise DatasetError(f"{where}:{lineno}: {exc}") from None
        if (r.prompt is None) == (r.messages is None):
            raise DatasetError(f"{where}:{lineno}: a row needs exactly one of prompt or messages")
        if r.output_tokens is not None and r.output_tokens < 1:
            raise DatasetError(f"{where}:{lineno}: outputTokens must be >= 1")
        if r.prompt is not None:
            conv = Conversation(row=row, system=None, turns=(Turn(r.prompt),))
        else:
            assert r.messages is not None
            pairs = []
            for m in r.messages:
                role = _ROLES.get(m.role)
                if role is None:
                    raise DatasetError(
                        f"{where}:{lineno}: role {m.role!r} is not system, user or assistant"
                    )
                pairs.append((role, _text(m.content)))
            conv = _conversation(row, pairs, single_last=True)
            if not conv.turns:
                raise DatasetError(f"{where}:{lineno}: messages have no user message")
        if r.output_tokens is not None:
            conv = Conversation(conv.row, conv.system, conv.turns, r.output_tokens, conv.single)
        out.append(conv)
        row += 1
    return out


# --------------------------------------------------------------------------- ShareGPT


class _SgMessage(msgspec.Struct, rename={"from_": "from"}):
    from_: str
    value: str


class _SgRow(msgspec.Struct):
    conversations: list[_SgMessage] = []


_decode_sharegpt = msgspec.json.Decoder(list[_SgRow]).decode
_SG_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


def parse_sharegpt(data: bytes, where: str, limit: int | None = None) -> list[Conversation]:
    """Rows of a ShareGPT JSON file with at least one human turn; at most ``limit``."""
    try:
        rows = _decode_sharegpt(data)
    except msgspec.DecodeError as exc:
        raise DatasetError(f"{where}: not a ShareGPT JSON array: {exc}") from None
    out: list[Conversation] = []
    for i, r in enumerate(rows):
        if limit is not None and len(out) >= limit:
            break
        pairs = []
        for j, m in enumerate(r.conversations):
            role = _SG_ROLES.get(m.from_)
            if role is None:
                raise DatasetError(
                    f"{where}: row {i}, message {j}: 'from' {m.from_!r} is not human, gpt or system"
                )
            pairs.append((role, m.value))
        conv = _conversation(i, pairs, single_last=False)
        if conv.turns:
            out.append(conv)
    return out


def load_dataset(
    path: Path, fmt: Literal["jsonl", "sharegpt"], limit: int | None = None
) -> list[Conversation]:
    """The usable rows of the dataset at ``path`` (at most ``limit``, the first ones);
    DatasetError when it cannot be read or has none."""
    try:
        if fmt == "jsonl":
            with path.open(encoding="utf-8") as f:
                rows = parse_jsonl(f, str(path), limit)
        else:
            rows = parse_sharegpt(path.read_bytes(), str(path), limit)
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text: {exc}") from None
    if not rows:
        raise DatasetError(f"{path}: no usable rows (a row needs a user turn)")
    return rows


# --------------------------------------------------------------------------- order


class RowOrder:
    """The positions (``0..n-1``) of the rows one worker sends, in order, without end.

    Entry ``k`` of the worker is entry ``worker + k * workers`` of the run's order: pass
    ``p`` of the run's order is ``0..n-1`` (sequential) or the permutation drawn from
    ``(seed, p)`` (random). ``start`` skips the worker's first entries (a resumed worker).

    >>> o = RowOrder(5, "sequential", seed=0, worker=1, workers=2)
    >>> [o.next() for _ in range(5)]
    [1, 3, 0, 2, 4]
    """

    def __init__(
        self,
        n: int,
        sampling: Literal["sequential", "random"],
        *,
        seed: int,
        worker: int,
        workers: int,
        start: int = 0,
    ) -> None:
        if n < 1:
            raise ValueError("no rows")
        self._n = n
        self._random = sampling == "random"
        self._seed = seed
        self._worker = worker
        self._workers = workers
        self._k = start
        self._pass = -1
        self._perm: list[int] = []

    def next(self) -> int:
        g = self._worker + self._k * self._workers
        self._k += 1
        p, i = divmod(g, self._n)
        if not self._random:
            return i
        if p != self._pass:
            self._perm = rng_for((self._seed, _SHUFFLE, p)).permutation(self._n).tolist()
            self._pass = p
        return self._perm[i]
