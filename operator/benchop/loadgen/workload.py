"""What one worker's requests ask, in order: synthetic prompts, shared prefixes or a dataset.

:class:`Workload` turns ``spec.workload`` into one :class:`Prompt` per request
(``next(attempt, index)``): the text or messages, the prompt's token count, the
``max_tokens`` to send and where it came from (dataset row and turn, shared prefix).
Everything a request needs that costs more than a few microseconds is done when the worker
starts, before any request: the dataset is read and counted, the tokenizer fitted
(:class:`~benchop.loadgen.tokenizer.SyntheticText`); lengths are drawn in blocks.

Synthetic: prompt ``index`` of ``attempt`` is a text picked by SHAKE-128 of
``(seed, worker, attempt, index)`` (:func:`~benchop.loadgen.prompts.make_prompt`, the
same text as before lengths could vary), its length and ``max_tokens`` drawn from the
worker's own seeded streams (:mod:`~benchop.loadgen.lengths`). With shared prefixes, one of
``prefixes`` texts (the same in every worker: keyed by seed and number only) is put in front,
the choice drawn from a third stream.

Dataset: rows in the order of :class:`~benchop.loadgen.datasets.RowOrder`, one stream per
worker for warmup and profiling together (profiling goes on where warmup stopped). A
single-turn run sends each row's request (see :class:`~benchop.loadgen.datasets.Conversation`).
A multi-turn run sends turn 0 of a conversation, and the next turn only after the previous
one's answer came back, with the server's answers in the messages: a conversation whose
answer is ready is continued by the next request slot (``on_reply`` puts it in line), else
a new conversation starts. A failed turn ends its conversation. With the completions API,
the messages' contents are joined by blank lines into one prompt.

``max_tokens``: ``workload.outputTokens``/``outputLength`` when set; else (a dataset) the
row's ``outputTokens``, else the token count of the row's reference answer to that turn,
else 128.

    w = Workload.for_worker(spec.workload, api="chat", worker=0, workers=2)
    p = w.next(attempt=1, index=0)
    body = client.body(p.text, p.max_tokens) if p.messages is None else ...
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from benchop.api.workload import (
    DEFAULT_OUTPUT_TOKENS,
    LengthDistribution,
    WorkloadSpec,
)
from benchop.core.workloadfiles import MOUNT_ROOT, file_path
from benchop.loadgen.datasets import Conversation, RowOrder, load_dataset
from benchop.loadgen.lengths import OUTPUT, PREFIX, PROMPT, LengthStream
from benchop.loadgen.tokenizer import SyntheticText, TokenCounter, load_tokenizer

__all__ = ["Prompt", "Workload"]

log = logging.getLogger(__name__)

Api = Literal["chat", "completions"]
PREFIX_WORDS_AHEAD = 4_000_000
"""Shared prefixes up to this many tokens in all are made before the run (else as used)."""
Message = dict[str, str]


@dataclass(slots=True)
class Replay:
    """A conversation being replayed: its next turn and the messages so far."""

    conv: Conversation
    turn: int = 0
    history: list[Message] = field(default_factory=list)
    tokens: int = 0  # content tokens of history


@dataclass(slots=True)
class Prompt:
    """One request's content: ``text`` (a prompt, or chat's one user message) or
    ``messages``; the prompt's tokens as counted by the workload's counter; max_tokens."""

    text: str | None
    messages: list[Message] | None
    prompt_tokens: int
    max_tokens: int
    row: int | None = None
    turn: int | None = None
    prefix: int | None = None
    replay: Replay | None = None


@dataclass(slots=True)
class _Streams:
    prompt: LengthStream
    output: LengthStream
    prefix: LengthStream | None


class Workload:
    """The requests of one worker (see the module doc)."""

    def __init__(
        self,
        spec: WorkloadSpec,
        *,
        api: Api,
        worker: int,
        workers: int,
        counter: TokenCounter,
        rows: list[Conversation] | None = None,
        start: int = 0,
    ) -> None:
        self.spec = spec
        self.api = api
        self.worker = worker
        self.counter = counter
        self.text = SyntheticText(counter)
        self._streams: dict[int, _Streams] = {}
        self._prefixes: dict[int, tuple[str, int]] = {}
        self._output = spec.output
        ds = spec.dataset
        self.multi_turn = ds is not None and ds.multi_turn
        self._rows = rows
        self._ready: deque[Replay] = deque()
        if ds is not None:
            if rows is None:
                raise ValueError("a dataset workload needs its rows")
            self._order = RowOrder(
                len(rows), ds.sampling, seed=spec.seed, worker=worker, workers=workers,
                start=start,
            )  # fmt: skip
            self._count_rows(rows)

    @classmethod
    def for_worker(
        cls,
        spec: WorkloadSpec,
        *,
        api: Api,
        worker: int,
        workers: int,
        start: int = 0,
        root: str = MOUNT_ROOT,
    ) -> Workload:
        """Read the spec's tokenizer and dataset (``root``: where a pod mounts them) and
        build the workload; ValueError (naming the file) when one cannot be used."""
        tok = spec.tokenizer
        counter = load_tokenizer(
            None if tok is None else file_path(tok, "tokenizer", root),
            None if tok is None else tok.display_name,
        )
        rows = None
        if spec.dataset is not None:
            ds = spec.dataset
            rows = load_dataset(Path(file_path(ds, "dataset", root)), ds.format, ds.limit)
            log.info("dataset: %d rows (%s)", len(rows), ds.display_name)
        return cls(
            spec, api=api, worker=worker, workers=workers, counter=counter, rows=rows,
            start=start,
        )  # fmt: skip

    # ------------------------------------------------------------------ requests

    def ready(self, attempt: int) -> None:
        """Do now what the first request of ``attempt`` would otherwise pay for (seeding the
        streams, their first blocks: 20-40 ms the first time numpy seeds a generator; the
        shared prefixes): the worker calls it before a phase starts sending."""
        st = self._streams_of(attempt)
        for s in (st.prompt, st.output, st.prefix):
            if s is not None:
                s.fill()
        sp = self.spec.shared_prefix
        if sp is not None and sp.prefixes * sp.tokens <= PREFIX_WORDS_AHEAD:
            for k in range(sp.prefixes):
                self.prefix(k)

    def next(self, attempt: int, index: int) -> Prompt:
        """Request ``index`` of ``attempt`` (0 is warmup)."""
        if self._rows is None:
            return self._synthetic(attempt, index)
        if self.multi_turn:
            return self._turn(attempt)
        return self._single(attempt)

    def on_reply(self, prompt: Prompt, answer: str | None) -> None:
        """A multi-turn request ended: ``answer`` is the server's reply (None: it failed,
        the conversation ends)."""
        r = prompt.replay
        if r is None or answer is None:
            return
        user = r.conv.turns[r.turn].user
        r.history.append({"role": "user", "content": user})
        r.history.append({"role": "assistant", "content": answer})
        r.tokens += self._user_tokens[r.conv.row, r.turn] + self.counter.count(answer)
        r.turn += 1
        if r.turn < len(r.conv.turns):
            self._ready.append(r)

    # ------------------------------------------------------------------ synthetic

    def _streams_of(self, attempt: int) -> _Streams:
        st = self._streams.get(attempt)
        if st is None:
            seed, w = self.spec.seed, self.worker
            sp = self.spec.shared_prefix
            out = self._output or LengthDistribution(
                distribution="fixed", mean=DEFAULT_OUTPUT_TOKENS
            )
            st = self._streams[attempt] = _Streams(
                prompt=LengthStream(self.spec.prompt, (seed, PROMPT, w, attempt)),
                output=LengthStream(out, (seed, OUTPUT, w, attempt)),
                prefix=None
                if sp is None
                else LengthStream(
                    LengthDistribution(distribution="uniform", min=1, max=sp.prefixes),
                    (seed, PREFIX, w, attempt),
                ),
            )
        return st

    def prefix(self, k: int) -> tuple[str, int]:
        """Shared prefix ``k`` and its tokens (the same text in every worker)."""
        got = self._prefixes.get(k)
        if got is None:
            sp = self.spec.shared_prefix
            assert sp is not None
            got = self._prefixes[k] = self.text.make(
                b"benchop-prefix:%d:%d" % (self.spec.seed, k), sp.tokens
            )
        return got

    def _synthetic(self, attempt: int, index: int) -> Prompt:
        st = self._streams_of(attempt)
        key = b"benchop:%d:%d:%d:%d" % (self.spec.seed, self.worker, attempt, index)
        text, n = self.text.make(key, st.prompt.next())
        k = None
        if st.prefix is not None:
            k = st.prefix.next() - 1
            head, m = self.prefix(k)
            text, n = head + " " + text, m + n
        return Prompt(text, None, n, st.output.next(), prefix=k)

    # ------------------------------------------------------------------ dataset

    def _count_rows(self, rows: list[Conversation]) -> None:
        """Token counts of every text a request may carry, in one batch, before the run."""
        keys: list[tuple[str, int, int]] = []
        texts: list[str] = []
        for c in rows:
            if c.system:
                keys.append(("s", c.row, 0))
                texts.append(c.system)
            for t, turn in enumerate(c.turns):
                keys.append(("u", c.row, t))
                texts.append(turn.user)
                if turn.answer:
                    keys.append(("a", c.row, t))
                    texts.append(turn.answer)
        counts = self.counter.count_many(texts)
        self._system_tokens: dict[int, int] = {}
        self._user_tokens: dict[tuple[int, int], int] = {}
        self._answer_tokens: dict[tuple[int, int], int] = {}
        for (kind, row, t), n in zip(keys, counts, strict=True):
            if kind == "s":
                self._system_tokens[row] = n
            elif kind == "u":
                self._user_tokens[row, t] = n
            else:
                self._answer_tokens[row, t] = n
        self._joined: dict[int, tuple[str, int]] = {}
        if self.api == "completions" and not self.multi_turn:
            joined = [(c.row, _join(_single_messages(c))) for c in rows]
            self._joined = {
                row: (text, n)
                for (row, text), n in zip(
                    joined, self.counter.count_many([t for _, t in joined]), strict=True
                )
            }

    def _max_tokens(self, attempt: int, conv: Conversation, turn: int) -> int:
        if self._output is not None:
            return self._streams_of(attempt).output.next()
        if conv.output_tokens is not None:
            return conv.output_tokens
        return self._answer_tokens.get((conv.row, turn)) or DEFAULT_OUTPUT_TOKENS

    def _single(self, attempt: int) -> Prompt:
        assert self._rows is not None
        conv = self._rows[self._order.next()]
        t = conv.single
        max_tokens = self._max_tokens(attempt, conv, t)
        if self.api == "completions":
            text, n = self._joined[conv.row]
            return Prompt(text, None, n, max_tokens, row=conv.row, turn=t)
        n = self._system_tokens.get(conv.row, 0)
        for i in range(t + 1):
            n += self._user_tokens[conv.row, i]
            if i < t:
                n += self._answer_tokens.get((conv.row, i), 0)
        return Prompt(None, _single_messages(conv), n, max_tokens, row=conv.row, turn=t)

    def _turn(self, attempt: int) -> Prompt:
        if self._ready:
            r = self._ready.popleft()
        else:
            assert self._rows is not None
            conv = self._rows[self._order.next()]
            r = Replay(conv)
            if conv.system:
                r.history.append({"role": "system", "content": conv.system})
                r.tokens = self._system_tokens[conv.row]
        conv, t = r.conv, r.turn
        messages = [*r.history, {"role": "user", "content": conv.turns[t].user}]
        n = r.tokens + self._user_tokens[conv.row, t]
        max_tokens = self._max_tokens(attempt, conv, t)
        if self.api == "completions":
            text = _join(messages)
            return Prompt(
                text, None, self.counter.count(text), max_tokens, row=conv.row, turn=t, replay=r
            )
        return Prompt(None, messages, n, max_tokens, row=conv.row, turn=t, replay=r)


def _single_messages(conv: Conversation) -> list[Message]:
    """The messages of a single-turn request: system, the turns before ``single`` with their
    reference answers, then its user message."""
    out: list[Message] = []
    if conv.system:
        out.append({"role": "system", "content": conv.system})
    for t in range(conv.single + 1):
        turn = conv.turns[t]
        out.append({"role": "user", "content": turn.user})
        if t < conv.single and turn.answer:
            out.append({"role": "assistant", "content": turn.answer})
    return out


def _join(messages: list[Message]) -> str:
    """The completions API's prompt for messages: their contents, blank lines between."""
    return "\n\n".join(m["content"] for m in messages)
