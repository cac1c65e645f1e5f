"""spec.workload in the load generator: drawn lengths, shared prefixes, datasets, tokenizer.

Each test checks numbers: moments of the drawn lengths for a seed, clamps, how many prefixes
were used and how often, the rows each worker sends and in which order, token counts by the
tokenizer of the texts that were made.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from benchop.api.workload import LengthDistribution, WorkloadSpec
from benchop.loadgen.datasets import (
    Conversation,
    DatasetError,
    RowOrder,
    Turn,
    load_dataset,
)
from benchop.loadgen.lengths import BLOCK, LengthStream, draw_lengths, rng_for
from benchop.loadgen.prompts import make_prompt
from benchop.loadgen.tokenizer import HfTokenizer, SyntheticText, WordCounter
from benchop.loadgen.workload import Prompt, Workload

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer" / "tokenizer.json"
N = 20_000


def dist(**kw: Any) -> LengthDistribution:
    return LengthDistribution.model_validate(kw)


def synthetic(counter: Any = None, **workload: Any) -> Workload:
    spec = WorkloadSpec.model_validate({"seed": 3, **workload})
    return Workload(spec, api="chat", worker=0, workers=1, counter=counter or WordCounter())


# --------------------------------------------------------------------------- lengths


@pytest.mark.parametrize(
    ("d", "mean", "std"),
    [
        (dist(distribution="fixed", mean=300), 300.0, 0.0),
        (dist(distribution="uniform", min=10, max=90), 50.0, math.sqrt((81**2 - 1) / 12)),
        (dist(distribution="normal", mean=512, std=128), 512.0, 128.0),
        (dist(distribution="lognormal", mean=400, std=250), 400.0, 250.0),
    ],
    ids=lambda x: x.distribution if isinstance(x, LengthDistribution) else "",
)
def test_drawn_lengths_have_the_distributions_moments(
    d: LengthDistribution, mean: float, std: float
) -> None:
    a = draw_lengths(d, rng_for([7, 1, 0, 1]), N)
    assert a.dtype == np.int64 and a.size == N
    # 20,000 draws: the sample mean is within ~4 standard errors, the std within a few %
    assert abs(a.mean() - mean) <= 4 * max(std, 0.5) / math.sqrt(N) + 0.5
    assert a.std() == pytest.approx(std, rel=0.04, abs=0.01)
    if d.distribution == "uniform":
        assert (a.min(), a.max()) == (10, 90) and len(set(a.tolist())) == 81


def test_clamps_are_honoured_and_take_the_tails() -> None:
    d = dist(distribution="normal", mean=100, std=50, min=60, max=150)
    a = draw_lengths(d, rng_for([1]), N)
    assert a.min() == 60 and a.max() == 150
    # P(x < 59.5) = P(z < -0.81) = 0.209; P(x > 150.5) = P(z > 1.01) = 0.156
    assert (a == 60).mean() == pytest.approx(0.209, abs=0.015)
    assert (a == 150).mean() == pytest.approx(0.156, abs=0.015)
    wide = draw_lengths(dist(distribution="lognormal", mean=5, std=20), rng_for([2]), N)
    assert wide.min() >= 1  # never a zero-token prompt, even without a min


def test_streams_are_per_worker_and_attempt_and_reproducible() -> None:
    d = dist(distribution="uniform", min=1, max=10_000)

    def first(key: tuple[int, ...], n: int = BLOCK + 5) -> list[int]:
        s = LengthStream(d, key)
        return [s.next() for _ in range(n)]  # across a block boundary

    assert first((3, 1, 0, 1)) == first((3, 1, 0, 1))
    assert (
        first((3, 1, 0, 1))
        == draw_lengths(d, rng_for([3, 1, 0, 1]), BLOCK + 5).tolist()[:BLOCK]
        + first((3, 1, 0, 1))[BLOCK:]
    )
    assert first((3, 1, 0, 1), 50) != first((3, 1, 1, 1), 50)  # another worker
    assert first((3, 1, 0, 1), 50) != first((3, 1, 0, 2), 50)  # another attempt
    assert first((3, 1, 0, 1), 50) != first((4, 1, 0, 1), 50)  # another seed


def test_synthetic_prompts_have_the_drawn_lengths() -> None:
    w = synthetic(
        promptLength={"distribution": "normal", "mean": 200, "std": 40, "min": 100},
        outputLength={"distribution": "uniform", "min": 5, "max": 15},
    )
    prompts = [w.next(1, i) for i in range(3000)]
    lens = np.array([p.prompt_tokens for p in prompts])
    assert [len((p.text or "").split()) for p in prompts] == lens.tolist()
    assert lens.mean() == pytest.approx(200, abs=3) and lens.std() == pytest.approx(40, rel=0.06)
    assert lens.min() >= 100
    outs = [p.max_tokens for p in prompts]
    assert set(outs) == set(range(5, 16))
    again = synthetic(
        promptLength={"distribution": "normal", "mean": 200, "std": 40, "min": 100},
        outputLength={"distribution": "uniform", "min": 5, "max": 15},
    )
    assert [again.next(1, i) for i in range(3000)] == prompts  # same seed: same run


def test_fixed_lengths_keep_todays_prompts() -> None:
    w = synthetic(promptTokens=16, outputTokens=8)
    p = w.next(1, 5)
    assert p.text == make_prompt(3, worker=0, attempt=1, index=5, n_tokens=16)
    assert (p.prompt_tokens, p.max_tokens, p.messages) == (16, 8, None)
    default = synthetic().next(1, 0)
    assert (default.prompt_tokens, default.max_tokens) == (512, 128)


# --------------------------------------------------------------------------- shared prefixes


def test_shared_prefixes_are_n_texts_of_l_tokens_picked_uniformly() -> None:
    spec = {"promptTokens": 10, "outputTokens": 4, "sharedPrefix": {"prefixes": 8, "tokens": 32}}
    w0 = synthetic(**spec)
    w1 = Workload(
        WorkloadSpec.model_validate({"seed": 3, **spec}),
        api="chat",
        worker=1,
        workers=2,
        counter=WordCounter(),
    )
    prompts = [w0.next(1, i) for i in range(4000)]
    heads = Counter()
    for p in prompts:
        assert p.prefix is not None and p.text is not None
        head, n = w0.prefix(p.prefix)
        assert n == 32 and len(head.split()) == 32
        assert p.text.startswith(head + " ")
        assert p.prompt_tokens == 42 == len(p.text.split())
        heads[head] += 1
    assert len(heads) == 8  # eight distinct texts, each used
    assert set(Counter(p.prefix for p in prompts)) == set(range(8))
    assert all(abs(c - 500) < 100 for c in heads.values()), heads  # uniform: 500 +- 4.5 sd
    # the same prefixes in every worker (a cache shared by the run), their picks their own
    assert [w1.prefix(k) for k in range(8)] == [w0.prefix(k) for k in range(8)]
    assert [w1.next(1, i).prefix for i in range(50)] != [p.prefix for p in prompts[:50]]
    # the part after the prefix differs between requests
    assert len({p.text for p in prompts}) == len(prompts)


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tok() -> HfTokenizer:
    return HfTokenizer.from_file(TOKENIZER)


def test_fixture_tokenizer_is_a_real_byte_level_bpe(tok: HfTokenizer) -> None:
    assert tok.name == "tokenizer.json"
    assert tok.count("the water under the bridge") == 5  # words of the synthetic prompts
    assert tok.count("the quick brown fox") > 4  # others are split into pieces
    assert tok.count("<|special|> Grüße") == len(tok.tokenizer.encode("<|special|> Grüße").ids)
    assert tok.splits_words()


@pytest.mark.parametrize("n", [1, 2, 17, 128, 1000])
def test_synthetic_text_has_exactly_n_tokens_of_the_tokenizer(tok: HfTokenizer, n: int) -> None:
    st = SyntheticText(tok)
    assert st.fast
    for k in range(20):
        text, count = st.make(b"t:%d:%d" % (n, k), n)
        assert count == n == tok.count(text)


def test_tokenizer_exact_prompts_with_lengths_and_prefixes(tok: HfTokenizer) -> None:
    w = synthetic(
        tok,
        promptLength={"distribution": "lognormal", "mean": 60, "std": 30, "max": 300},
        sharedPrefix={"prefixes": 3, "tokens": 20},
    )
    for i in range(300):
        p = w.next(1, i)
        assert p.text is not None
        assert tok.count(p.text) == p.prompt_tokens  # tokenize what is sent, compare
        assert tok.count(w.prefix(p.prefix or 0)[0]) == 20


def test_a_tokenizer_whose_tokens_span_words_gets_exact_prompts_the_slow_way(
    tmp_path: Path,
) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    from benchop.loadgen.prompts import WORDS

    t = Tokenizer(models.BPE())  # SentencePiece-style spaces, no pre-tokenizer: merges cross
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400, show_progress=False, initial_alphabet=list("abcdefghijklmnopqrstuvwxyz▁")
    )
    t.train_from_iterator([" ".join(WORDS[i:] + WORDS[:i]) for i in range(40)], trainer=trainer)
    t.save(str(tmp_path / "tokenizer.json"))
    spanning = HfTokenizer.from_file(tmp_path / "tokenizer.json")
    assert not spanning.splits_words()
    st = SyntheticText(spanning)
    assert not st.fast
    exact = 0
    for n in range(2, 120, 3):
        text, count = st.make(b"s:%d" % n, n)
        assert count == spanning.count(text)  # what the record says is what was sent
        exact += count == n
    assert exact >= 38  # of 40: a cut inside a merge can miss by one


def test_a_file_that_is_not_a_tokenizer_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"not a Hugging Face tokenizer\.json"):
        HfTokenizer.from_file(bad)


# --------------------------------------------------------------------------- datasets

JSONL_ROWS: list[dict[str, Any]] = [
    {"prompt": "zero one", "outputTokens": 5},
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer here"},
            {"role": "user", "content": "second question"},
        ],
        "id": "ignored",
    },
    {"prompt": "two"},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts a b"}]}]},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


def test_jsonl_rows_become_conversations(tmp_path: Path) -> None:
    rows = load_dataset(write_jsonl(tmp_path / "d.jsonl", JSONL_ROWS), "jsonl")
    assert rows == [
        Conversation(0, None, (Turn("zero one"),), 5),
        Conversation(
            1,
            "be brief",
            (Turn("first question", "first answer here"), Turn("second question")),
            single=1,
        ),
        Conversation(2, None, (Turn("two"),)),
        Conversation(3, None, (Turn("parts a b"),)),
    ]
    assert load_dataset(tmp_path / "d.jsonl", "jsonl", limit=2) == rows[:2]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "d.jsonl:2: "),
        ('{"outputTokens": 3}', "d.jsonl:2: a row needs exactly one of prompt or messages"),
        ('{"prompt": "a", "messages": []}', "exactly one of prompt or messages"),
        ('{"messages": [{"role": "tool", "content": "x"}]}', "d.jsonl:2: role 'tool'"),
        ('{"messages": [{"role": "system", "content": "x"}]}', "no user message"),
        ('{"prompt": "a", "outputTokens": 0}', "outputTokens must be >= 1"),
    ],
)
def test_a_bad_jsonl_row_is_an_error_naming_its_line(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(path, "jsonl")


def test_sharegpt_rows_become_conversations(tmp_path: Path) -> None:
    data = [
        {"id": "a", "conversations": [{"from": "gpt", "value": "hello first"}]},  # no human
        {
            "id": "b",
            "conversations": [
                {"from": "system", "value": "sys"},
                {"from": "human", "value": "q one"},
                {"from": "gpt", "value": "a one"},
                {"from": "human", "value": "q two"},
                {"from": "chatgpt", "value": "a two"},
            ],
        },
        {"conversations": [{"from": "user", "value": "only"}]},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    rows = load_dataset(path, "sharegpt")
    assert rows == [
        Conversation(1, "sys", (Turn("q one", "a one"), Turn("q two", "a two")), single=0),
        Conversation(2, None, (Turn("only"),)),
    ]
    path.write_text(json.dumps([{"conversations": [{"from": "robot", "value": "x"}]}]))
    with pytest.raises(DatasetError, match="row 0, message 0: 'from' 'robot'"):
        load_dataset(path, "sharegpt")
    path.write_text("{}")
    with pytest.raises(DatasetError, match="not a ShareGPT JSON array"):
        load_dataset(path, "sharegpt")
    with pytest.raises(DatasetError, match="cannot read dataset"):
        load_dataset(tmp_path / "missing.json", "sharegpt")


def test_sequential_rows_are_dealt_round_robin_in_file_order() -> None:
    n, workers = 10, 3
    orders = [RowOrder(n, "sequential", seed=0, worker=w, workers=workers) for w in range(workers)]
    seqs = [[o.next() for _ in range(7)] for o in orders]
    assert seqs[0] == [0, 3, 6, 9, 2, 5, 8]  # wraps into the second pass: 12 % 10 = 2
    assert seqs[1] == [1, 4, 7, 0, 3, 6, 9]
    assert seqs[2] == [2, 5, 8, 1, 4, 7, 0]
    resumed = RowOrder(n, "sequential", seed=0, worker=1, workers=3, start=4)
    assert [resumed.next() for _ in range(3)] == seqs[1][4:7]


def test_random_rows_are_the_same_sample_for_the_same_seed() -> None:
    n, workers = 50, 2

    def run(seed: int) -> list[list[int]]:
        orders = [RowOrder(n, "random", seed=seed, worker=w, workers=workers) for w in (0, 1)]
        return [[o.next() for _ in range(n)] for o in orders]  # two passes together

    a, b = run(7), run(7)
    assert a == b
    assert run(8) != a
    first_pass = sorted(a[0][:25] + a[1][:25])
    assert first_pass == list(range(n))  # every row once per pass, split between the workers
    second_pass = a[0][25:] + a[1][25:]
    assert sorted(second_pass) == list(range(n))
    assert a[0][:25] != sorted(a[0][:25])  # shuffled, not file order
    assert a[0][:25] + a[1][:25] != second_pass  # each pass reshuffled


def _dataset_workload(
    rows: list[Conversation],
    *,
    api: Literal["chat", "completions"] = "chat",
    worker: int = 0,
    workers: int = 1,
    **ds: Any,
) -> Workload:
    spec = WorkloadSpec.model_validate({"seed": 1, "dataset": {"file": "/x.jsonl", **ds}})
    return Workload(
        spec,
        api=api,
        worker=worker,
        workers=workers,
        counter=WordCounter(),
        rows=rows,
    )


def test_single_turn_dataset_requests(tmp_path: Path) -> None:
    rows = load_dataset(write_jsonl(tmp_path / "d.jsonl", JSONL_ROWS), "jsonl")
    w = _dataset_workload(rows)
    got = [w.next(1, i) for i in range(5)]
    assert [(p.row, p.turn) for p in got] == [(0, 0), (1, 1), (2, 0), (3, 0), (0, 0)]
    assert got[0].messages == [{"role": "user", "content": "zero one"}]
    assert got[1].messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer here"},
        {"role": "user", "content": "second question"},
    ]
    assert [p.prompt_tokens for p in got] == [2, 2 + 2 + 3 + 2, 1, 3, 2]
    # max_tokens: the row's outputTokens, else its reference answer's tokens, else 128
    assert [p.max_tokens for p in got] == [5, 128, 128, 128, 5]
    completions = _dataset_workload(rows, api="completions").next(1, 0)
    assert completions.messages is None and completions.text == "zero one"
    second = _dataset_workload(rows, api="completions")
    second.next(1, 0)
    p = second.next(1, 1)
    assert p.text == "be brief\n\nfirst question\n\nfirst answer here\n\nsecond question"
    assert p.prompt_tokens == 9
    fixed = WorkloadSpec.model_validate(
        {"dataset": {"file": "/x"}, "outputLength": {"distribution": "fixed", "mean": 7}}
    )
    w2 = Workload(fixed, api="chat", worker=0, workers=1, counter=WordCounter(), rows=rows)
    assert {w2.next(1, i).max_tokens for i in range(4)} == {7}  # the spec overrides rows


def test_multi_turn_replays_with_the_servers_answers(tmp_path: Path) -> None:
    rows = load_dataset(write_jsonl(tmp_path / "d.jsonl", JSONL_ROWS[1:3]), "jsonl")
    w = _dataset_workload(rows, multiTurn=True)
    a = w.next(1, 0)  # conversation row 0, turn 0
    b = w.next(1, 1)  # nothing ready: the next conversation (row 1)
    assert (a.row, a.turn, b.row, b.turn) == (0, 0, 1, 0)
    assert a.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
    ]
    assert a.max_tokens == 3  # the reference answer's words
    w.on_reply(a, "served reply text")
    c = w.next(1, 2)  # row 0 turn 1, with the server's answer, not the dataset's
    assert (c.row, c.turn) == (0, 1)
    assert c.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "served reply text"},
        {"role": "user", "content": "second question"},
    ]
    assert c.prompt_tokens == 2 + 2 + 3 + 2
    w.on_reply(c, "done")  # the last turn: the conversation ends
    w.on_reply(b, None)  # failed: ends too
    d = w.next(1, 3)
    assert (d.row, d.turn) == (0, 0)  # the next pass starts over


def test_dataset_counts_with_the_tokenizer(tmp_path: Path, tok: HfTokenizer) -> None:
    rows = load_dataset(write_jsonl(tmp_path / "d.jsonl", JSONL_ROWS), "jsonl")
    spec = WorkloadSpec.model_validate({"dataset": {"file": "/x"}})
    w = Workload(spec, api="chat", worker=0, workers=1, counter=tok, rows=rows)
    for i in range(4):
        p: Prompt = w.next(1, i)
        assert p.messages is not None
        assert p.prompt_tokens == sum(tok.count(m["content"]) for m in p.messages)
    assert w.next(1, 4).max_tokens == 5
    second = w.next(1, 5)
    assert second.row == 1 and second.max_tokens == 128


# --------------------------------------------------------------------------- local mode files


def _manifest(workload: dict[str, Any], kind: str = "BenchmarkRun") -> Any:
    from benchop.api.models import load_manifest

    spec = {
        "target": {"model": "m"},
        "workload": workload,
        "load": {"concurrency": 1},
        "phases": {"profiling": {"requests": 1}},
    }
    if kind == "Experiment":
        body = {"template": spec, "sweep": [{"path": "load.concurrency", "values": [1, 2]}]}
        return load_manifest({"kind": kind, "metadata": {"name": "e"}, "spec": body})
    return load_manifest({"kind": kind, "metadata": {"name": "r"}, "spec": spec})


def test_local_files_are_relative_to_the_yaml_and_cluster_sources_refused(tmp_path: Path) -> None:
    from benchop.local.files import local_files

    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "d.jsonl", JSONL_ROWS)
    run = local_files(
        _manifest({"dataset": {"file": "data/d.jsonl"}, "tokenizer": {"file": str(TOKENIZER)}}),
        tmp_path,
    )
    assert run.spec.workload.dataset.file == str(tmp_path / "data" / "d.jsonl")
    assert run.spec.workload.tokenizer.file == str(TOKENIZER)  # absolute stays
    exp = local_files(_manifest({"dataset": {"file": "data/d.jsonl"}}, "Experiment"), tmp_path)
    assert all(
        s.workload.dataset.file == str(tmp_path / "data" / "d.jsonl") for _, s in exp.spec.points()
    )
    with pytest.raises(ValueError, match=r"spec\.workload\.dataset\.file: .*missing\.jsonl does"):
        local_files(_manifest({"dataset": {"file": "missing.jsonl"}}), tmp_path)
    cm = {"configMap": {"name": "t", "key": "tokenizer.json"}}
    with pytest.raises(ValueError, match=r"spec\.workload\.tokenizer\.configMap: a configMap is"):
        local_files(_manifest({"tokenizer": cm}), tmp_path)
    pvc = {"dataset": {"pvc": {"claimName": "c", "path": "d.jsonl"}}}
    with pytest.raises(ValueError, match=r"spec\.template\.workload\.dataset\.pvc"):
        local_files(_manifest(pvc, "Experiment"), tmp_path)


# --------------------------------------------------------------------------- cluster rules


def test_the_operator_refuses_a_relative_file_and_accepts_mounted_sources() -> None:
    from benchop.operator.handlers.experiments import validate_spec
    from benchop.operator.handlers.runs import InvalidRun, check_operator_rules

    def run_with(workload: dict[str, Any]) -> Any:
        run = _manifest(workload)
        run.spec.target.url = "http://vllm:8000/v1"
        return run

    with pytest.raises(InvalidRun, match=r"spec\.workload\.dataset\.file: in a cluster"):
        check_operator_rules(run_with({"dataset": {"file": "data/chat.jsonl"}}))
    for ok in (
        {"dataset": {"file": "/data/chat.jsonl"}},
        {"dataset": {"configMap": {"name": "c", "key": "chat.jsonl"}}},
        {"tokenizer": {"pvc": {"claimName": "m", "path": "tok/tokenizer.json"}}},
    ):
        check_operator_rules(run_with(ok))
    template = {
        "target": {"model": "m", "url": "http://vllm:8000/v1"},
        "workload": {"tokenizer": {"file": "tokenizer.json"}},
        "load": {"concurrency": 1},
        "phases": {"profiling": {"requests": 1}},
    }
    msg = validate_spec(
        {"template": template, "sweep": [{"path": "load.concurrency", "values": [1]}]}
    )
    assert isinstance(msg, str) and msg.startswith("spec.template.workload.tokenizer.file: in a")
