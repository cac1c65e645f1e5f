"""Seeded synthetic prompts whose word count is exactly the requested token count.

How tokens are counted (documented for users):

- A prompt of ``n`` tokens is ``n`` common English words joined by single spaces;
  each word is chosen from a list of words that are one token in the common BPE
  vocabularies (GPT-2/cl100k/Llama-3), so ``n`` words ~ ``n`` tokens. The chat
  template a server wraps around the message adds a few tokens of its own.
- The recorded input/output token counts are the server's ``usage`` numbers
  when the stream reports them (``stream_options.include_usage``); otherwise the
  input count is the prompt's word count and the output count is the number of
  stream chunks that carried content (one chunk ~ one token on vLLM, SGLang,
  TGI and the mock server). Each record says which source it used
  (``tokens_from_usage``).

Prompts are deterministic in ``(seed, worker, attempt, index)`` (the same on
every host and Python version) and differ between requests, so a server's
prefix cache does not turn the benchmark into a cache benchmark.

>>> p = make_prompt(7, worker=0, attempt=1, index=3, n_tokens=5)
>>> len(p.split())
5
>>> p == make_prompt(7, worker=0, attempt=1, index=3, n_tokens=5)
True
"""

from __future__ import annotations

import hashlib
import sys
from array import array

__all__ = ["WORDS", "make_prompt", "words_of"]

# Common lower-case English words that are single tokens (with a leading space)
# in the GPT-2, cl100k and Llama-3 vocabularies.
_WORDS_TEXT = """
    the of and to in is was for on that with as by at from his her it an are were be
    this which or had not but have they one their all has been there more when who will
    would can its into other out so some up about time than only what them new also many
    first then any over these may could like two such after most made people where water
    long very through just way back little world year work well day good under
    three old great same last between never state house life again place right high
    small part large found still city early days land money music power light river
    book story family group number market order paper field table window garden summer
    winter morning evening road train ship bridge stone wood glass metal bread fruit
    green blue black white red yellow north south east west open close quick slow
"""
WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())


def make_prompt(
    seed: int,
    *,
    worker: int,
    attempt: int,
    index: int,
    n_tokens: int,
    words: tuple[str, ...] = WORDS,
    first: tuple[str, ...] | None = None,
) -> str:
    """``n_tokens`` words drawn by SHAKE-128 of ``(seed, worker, attempt, index)``.

    Two digest bytes (little-endian) pick each word, modulo the list's length;
    about 4x cheaper than seeding a ``random.Random`` per request. Attempt 0 is
    the warmup phase; profiling attempts count from 1. ``words`` is the list to pick
    from and ``first``, if given, the list of the first word (a tokenizer may make a
    word one token only after a space: :mod:`benchop.loadgen.tokenizer`).
    """
    key = b"benchop:%d:%d:%d:%d" % (seed, worker, attempt, index)
    return words_of(key, n_tokens, words, first)


def words_of(
    key: bytes, n: int, words: tuple[str, ...] = WORDS, first: tuple[str, ...] | None = None
) -> str:
    """``n`` words picked by SHAKE-128 of ``key`` (see :func:`make_prompt`)."""
    if n <= 0:
        return ""
    picks = array("H", hashlib.shake_128(key).digest(2 * n))
    if sys.byteorder == "big":
        picks.byteswap()
    m = len(words)
    out = [words[i % m] for i in picks]
    if first is not None:
        out[0] = first[picks[0] % len(first)]
    return " ".join(out)
