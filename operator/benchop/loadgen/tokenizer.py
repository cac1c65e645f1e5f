"""Token counting and synthetic text of an exact token length: words, or a real tokenizer.

Two counters with one interface (:class:`TokenCounter`):

- :class:`WordCounter` (no ``spec.workload.tokenizer``): a text's tokens are its
  whitespace-separated words. Synthetic prompts are made of words that are one token in
  the common BPE vocabularies, so the counts are close, not exact (the chat template and
  the first word may add a token or two).
- :class:`HfTokenizer`: a Hugging Face ``tokenizer.json`` read by the ``tokenizers``
  library (no download: the file comes from the spec). Counts are ``len(encode(text,
  add_special_tokens=False))``: the content's tokens, without BOS/EOS and without the
  server's chat template.

:class:`SyntheticText` makes text of exactly ``n`` tokens for a counter, cheaply enough for
the load generator's request path. With a tokenizer, it keeps the words of
:data:`~benchop.loadgen.prompts.WORDS` that are one token after a space (and, for the first
word, at the start), and checks that the tokenizer's pre-tokenizer splits text at spaces
(byte-level BPE of GPT-2/Llama 3/Qwen, and split Metaspace): then a text of ``n`` such
words is ``n`` tokens by construction, the same cost as words. With a tokenizer that does
not split (BPE may merge across words), each text is encoded and cut to ``n`` tokens
(exact, but ~10x the CPU: ``fast`` says which).

    counter = HfTokenizer.from_file("tokenizer.json", name="tokenizer.json")
    text, n = SyntheticText(counter).make(b"key", 512)
    assert n == counter.count(text) == 512
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from benchop.loadgen.prompts import WORDS, words_of

__all__ = ["HfTokenizer", "SyntheticText", "TokenCounter", "WordCounter", "load_tokenizer"]

log = logging.getLogger(__name__)

MIN_WORDS = 16
"""Fewest one-token words the fast path needs (else texts are encoded and cut)."""
_CHECKS = (1, 2, 3, 7, 16, 33, 100, 257, 512)
_SPACES = " \u2581\u0120"  # a space as vocabularies write it: itself, SentencePiece's, byte-level


class TokenCounter(Protocol):
    """Counts tokens of texts; ``name`` is None for the word estimate."""

    @property
    def name(self) -> str | None: ...

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


class WordCounter:
    """Whitespace-separated words (today's estimate; the mock server counts the same way)."""

    name = None

    def count(self, text: str) -> int:
        return len(text.split())

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


class HfTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer``; counts exclude special tokens."""

    def __init__(self, tokenizer: object, name: str) -> None:
        from tokenizers import Tokenizer

        assert isinstance(tokenizer, Tokenizer)
        self.tokenizer = tokenizer
        self.name = name
        self._encode = tokenizer.encode

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> HfTokenizer:
        """Load a ``tokenizer.json``; ValueError naming the file when it is not one."""
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises plain Exception for a bad file
            raise ValueError(f"{path}: not a Hugging Face tokenizer.json: {exc}") from None
        return cls(tok, name or Path(path).name)

    def ids(self, text: str) -> list[int]:
        return list(self._encode(text, add_special_tokens=False).ids)

    def count(self, text: str) -> int:
        return len(self._encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def splits_words(self) -> bool:
        """True when no token can span two words: the pre-tokenizer cuts text at spaces, or
        (SentencePiece vocabularies used without one, as Llama 2's) no token of the vocabulary
        has a space in it after a non-space."""
        pre = self.tokenizer.pre_tokenizer
        if pre is not None and len(pre.pre_tokenize_str("one two three")) >= 3:
            return True
        for token in self.tokenizer.get_vocab():
            inner = token.lstrip(_SPACES)
            if inner and any(c in inner for c in _SPACES):
                return False
        return True


def load_tokenizer(path: str | Path | None, name: str | None = None) -> TokenCounter:
    """The counter for a ``tokenizer.json`` path, or :class:`WordCounter` for None."""
    if path is None:
        return WordCounter()
    return HfTokenizer.from_file(path, name)


class SyntheticText:
    """Text of exactly ``n`` tokens (by ``counter``), picked by a key (deterministic).

    ``make(key, n)`` for a text; ``fast`` tells whether texts are made without encoding
    them (see the module doc). Texts joined with a space count as the sum of their counts
    on the fast path (shared prefixes rely on it).
    """

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.words: tuple[str, ...] = WORDS
        self.first: tuple[str, ...] | None = None
        self.fast = True
        if isinstance(counter, HfTokenizer):
            self._fit(counter)

    def _fit(self, tok: HfTokenizer) -> None:
        mid = tuple(w for w in WORDS if tok.count(" " + w) == 1)
        first = tuple(w for w in mid if tok.count(w) == 1)
        self.words, self.first = mid, first
        splits = tok.splits_words()
        self.fast = len(mid) >= MIN_WORDS and bool(first) and splits
        if self.fast:  # by construction; checked once anyway
            for n in _CHECKS:
                text = words_of(b"benchop-check:%d" % n, n, self.words, self.first)
                if tok.count(text) != n or tok.count(text + " " + text) != 2 * n:
                    self.fast = False
                    break
        if not self.fast:
            if len(mid) < MIN_WORDS:
                self.words, self.first = WORDS, None
            log.warning(
                "tokenizer %s: synthetic prompts are encoded and cut to length (%d one-token "
                "words; tokens %s span words): exact, but more CPU per request",
                tok.name,
                len(mid),
                "never" if splits else "may",
            )

    def make(self, key: bytes, n: int) -> tuple[str, int]:
        """A text of ``n`` tokens (``n <= 0``: empty) and its count: ``n``, except where the
        slow path found no cut of exactly ``n`` (then the closest, counted)."""
        if n <= 0:
            return "", 0
        text = words_of(key, n, self.words, self.first)
        if self.fast:
            return text, n
        assert isinstance(self.counter, HfTokenizer)
        return _cut(self.counter, text, key, n)


def _cut(tok: HfTokenizer, text: str, key: bytes, n: int) -> tuple[str, int]:
    """``text`` made ``n`` tokens long: grown by words until it has ``n`` or more, then cut
    after token ``m`` for ``m`` near ``n`` until the cut text re-encodes to ``n`` tokens (a
    cut inside a merge may re-encode one more or less). The closest text if none does; the
    record's prompt count is of the text sent either way."""
    ids = tok.ids(text)
    grow = 0
    while len(ids) < n and grow < 8:
        text += " " + words_of(key + b":%d" % grow, n - len(ids))
        ids = tok.ids(text)
        grow += 1
    best, best_count = text, len(ids)
    for d in (0, -1, 1, -2, 2, -3, 3, -4, 4):
        m = n + d
        if not 0 < m <= len(ids):
            continue
        cand = tok.decode(ids[:m])
        c = tok.count(cand)
        if c == n:
            return cand, c
        if abs(c - n) < abs(best_count - n):
            best, best_count = cand, c
    return best, best_count
