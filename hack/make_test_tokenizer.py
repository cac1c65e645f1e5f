#!/usr/bin/env python3
"""Write the small Hugging Face tokenizer the tests use: tests/fixtures/tokenizer/tokenizer.json.

A byte-level BPE (the GPT-2 / Llama 3 kind: a pre-tokenizer that splits words with their
leading space, byte fallback through the byte alphabet) trained with the ``tokenizers``
library on the synthetic prompts' word list and this repository's docs, 1,024 tokens: small
enough to commit, real enough that prompt lengths and counts go through the same library
calls as a model's tokenizer.json. The committed file is what the tests use; this script
only says how it was made (training is deterministic for the same corpus).

    python hack/make_test_tokenizer.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from benchop.loadgen.prompts import WORDS

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizer" / "tokenizer.json"
VOCAB = 2048


def corpus() -> list[str]:
    # every word of the synthetic prompts gets a token of its own, with and without its space
    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4
    for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        texts += path.read_text().splitlines()
    return texts


def main() -> int:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {tok.get_vocab_size()} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
