"""``spec.workload``: what each request asks (synthetic, shared prefixes, datasets, tokenizer).

Part of the benchop API (:mod:`benchop.api.models` re-exports these classes). The rules a
schema cannot say live twice, as in the rest of the API: a model validator and a CEL rule
with the same message.

    workload:
      seed: 7
      promptLength: {distribution: lognormal, mean: 512, std: 256, min: 32, max: 4096}
      outputLength: {distribution: uniform, min: 64, max: 256}
      sharedPrefix: {prefixes: 8, tokens: 256}

    workload:
      dataset: {format: sharegpt, file: data/sharegpt.json, sampling: random, limit: 1000}
      tokenizer: {configMap: {name: llama3-tokenizer, key: tokenizer.json}}

How each is used: docs/workloads.md.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from benchop.api.base import Spec, cel

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_PERCENTILES",
    "DEFAULT_PROMPT_TOKENS",
    "ConfigMapKeyRef",
    "DatasetSpec",
    "LengthDistribution",
    "PvcFileRef",
    "ReportSpec",
    "SharedPrefixSpec",
    "TokenizerSpec",
    "WorkloadSpec",
]

DEFAULT_PROMPT_TOKENS = 512
DEFAULT_OUTPUT_TOKENS = 128
DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)
MAX_PERCENTILES = 16
MAX_TOKENS = 1_000_000
"""Largest length a workload may ask for (prompt or output tokens): a bound for the schema."""


def _check(rules: tuple[tuple[str, str], ...], broken: tuple[bool, ...]) -> None:
    """Raise the message of the first broken rule (rules and checks in the same order)."""
    for (_, message), bad in zip(rules, broken, strict=True):
        if bad:
            raise ValueError(message)


# --------------------------------------------------------------------------- lengths

LENGTH_RULES: tuple[tuple[str, str], ...] = (
    (
        "self.distribution != 'fixed' || (has(self.mean) && !has(self.std) && !has(self.min) "
        "&& !has(self.max))",
        "fixed takes mean (the length) and nothing else",
    ),
    (
        "self.distribution != 'uniform' || (has(self.min) && has(self.max) && !has(self.mean) "
        "&& !has(self.std))",
        "uniform takes min and max and nothing else",
    ),
    (
        "!(self.distribution in ['normal', 'lognormal']) || (has(self.mean) && has(self.std))",
        "normal and lognormal need mean and std",
    ),
    ("!has(self.min) || !has(self.max) || self.min <= self.max", "min must be <= max"),
    (
        "!has(self.mean) || ((!has(self.min) || self.min <= self.mean) && "
        "(!has(self.max) || self.mean <= self.max))",
        "mean must be within [min, max]",
    ),
)


class LengthDistribution(Spec, json_schema_extra=cel(*LENGTH_RULES)):
    """A token length drawn per request: rounded to an integer, clamped to [min, max] and >= 1.

    ``fixed``: always ``mean``. ``uniform``: integers ``min..max``, each as likely.
    ``normal``: mean and std. ``lognormal``: a log-normal whose own mean and std (in tokens,
    not of the log) are ``mean`` and ``std``. ``min``/``max`` clamp normal and log-normal
    draws (a clamped draw takes the bound: the bounds gain the tails' weight).
    """

    distribution: Literal["fixed", "uniform", "normal", "lognormal"]
    mean: int | None = Field(None, ge=1, le=MAX_TOKENS)
    std: float | None = Field(None, ge=0, le=MAX_TOKENS)
    min: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max: int | None = Field(None, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _fields_match_distribution(self) -> Self:
        has = {k: getattr(self, k) is not None for k in ("mean", "std", "min", "max")}
        d = self.distribution
        _check(
            LENGTH_RULES,
            (
                d == "fixed" and not (has["mean"] and not (has["std"] or has["min"] or has["max"])),
                d == "uniform"
                and not (has["min"] and has["max"] and not (has["mean"] or has["std"])),
                d in ("normal", "lognormal") and not (has["mean"] and has["std"]),
                self.min is not None and self.max is not None and self.min > self.max,
                self.mean is not None
                and (
                    (self.min is not None and self.mean < self.min)
                    or (self.max is not None and self.mean > self.max)
                ),
            ),
        )
        return self


class SharedPrefixSpec(Spec):
    """``prefixes`` distinct prefixes of ``tokens`` tokens; each request starts with one.

    A request's prompt is its prefix (chosen uniformly at random, seeded) followed by its
    own synthetic prompt of ``promptTokens`` / ``promptLength`` tokens: a server with a
    prefix cache computes each prefix once.
    """

    prefixes: int = Field(ge=1, le=100_000)
    tokens: int = Field(ge=1, le=MAX_TOKENS)


# --------------------------------------------------------------------------- files

SOURCE_RULE = (
    "[has(self.file), has(self.configMap), has(self.pvc)].filter(x, x).size() == 1",
    "set exactly one of file, configMap or pvc",
)
PVC_PATH_RULE = (
    "!self.path.startsWith('/') && self.path != '..' && !self.path.startsWith('../') "
    "&& !self.path.endsWith('/..') && !self.path.contains('/../')",
    "path must be relative to the volume's root, without '..'",
)


class ConfigMapKeyRef(Spec):
    """A key of a ConfigMap in the run's namespace (mounted read-only into the workers)."""

    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class PvcFileRef(Spec, json_schema_extra=cel(PVC_PATH_RULE)):
    """A file on a PersistentVolumeClaim in the run's namespace, mounted read-only into every
    worker (the claim must allow that: ReadOnlyMany or ReadWriteMany for workers on several
    nodes)."""

    claim_name: str = Field(min_length=1, max_length=253)
    path: str = Field(min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _relative(self) -> Self:
        p = self.path
        if p.startswith("/") or ".." in p.split("/"):
            raise ValueError(PVC_PATH_RULE[1])
        return self


class _FileSource(Spec, json_schema_extra=cel(SOURCE_RULE)):
    """Where a file comes from: exactly one of ``file``, ``configMap`` or ``pvc``."""

    file: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="A path the worker reads: `benchop run` resolves a relative path against "
        "the YAML's directory; in a cluster, a path inside the worker image.",
    )
    config_map: ConfigMapKeyRef | None = Field(
        None, description="A ConfigMap key (at most 1 MiB), mounted into the workers."
    )
    pvc: PvcFileRef | None = Field(None, description="A file on a PVC, mounted into the workers.")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if sum(x is not None for x in (self.file, self.config_map, self.pvc)) != 1:
            raise ValueError(SOURCE_RULE[1])
        return self

    @property
    def display_name(self) -> str:
        """The file's name as the results show it: ``tokenizer.json``, ``cm/key``, ``pvc:path``."""
        if self.config_map is not None:
            return f"configMap {self.config_map.name}/{self.config_map.key}"
        if self.pvc is not None:
            return f"pvc {self.pvc.claim_name}:{self.pvc.path}"
        assert self.file is not None
        return self.file.rsplit("/", 1)[-1]


class DatasetSpec(_FileSource):
    """Prompts from a file: ShareGPT JSON or JSONL rows of ``{prompt | messages, outputTokens?}``.

    Rows are used in file order (``sequential``) or in a seeded random order (``random``,
    ``workload.seed``), and split across workers: worker ``w`` of ``W`` sends entries ``w``,
    ``w + W``, ``w + 2W``, ... of that order (a run longer than the rows starts them over;
    random reshuffles each pass).
    """

    format: Literal["jsonl", "sharegpt"] = "jsonl"
    sampling: Literal["sequential", "random"] = "sequential"
    limit: int | None = Field(
        None, ge=1, description="Use at most this many rows (the file's first ones)."
    )
    multi_turn: bool = Field(
        False,
        description="Replay each conversation turn by turn, the server's own previous answers "
        "in context; otherwise each row is one request (its first user turn for ShareGPT).",
    )


class TokenizerSpec(_FileSource):
    """A Hugging Face ``tokenizer.json``: exact prompt lengths and token counts (no download)."""


# --------------------------------------------------------------------------- workload

WORKLOAD_RULES: tuple[tuple[str, str], ...] = (
    (
        "!(has(self.promptTokens) && has(self.promptLength))",
        "set promptTokens or promptLength, not both",
    ),
    (
        "!(has(self.outputTokens) && has(self.outputLength))",
        "set outputTokens or outputLength, not both",
    ),
    (
        "!has(self.dataset) || !(has(self.promptTokens) || has(self.promptLength) "
        "|| has(self.sharedPrefix))",
        "promptTokens, promptLength and sharedPrefix make synthetic prompts: not with a dataset",
    ),
)


class WorkloadSpec(Spec, json_schema_extra=cel(*WORKLOAD_RULES)):
    """What each request asks: synthetic prompts (the default), optionally behind shared
    prefixes, or rows of a dataset; lengths fixed or drawn from a distribution; seeded."""

    prompt_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS,
        description=f"Synthetic prompt length in tokens (default {DEFAULT_PROMPT_TOKENS}).",
    )
    output_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS,
        description=f"Output length (max_tokens) of every request (default "
        f"{DEFAULT_OUTPUT_TOKENS}; with a dataset, overrides the rows' lengths).",
    )
    prompt_length: LengthDistribution | None = Field(
        None, description="Synthetic prompt length drawn per request instead of promptTokens."
    )
    output_length: LengthDistribution | None = Field(
        None, description="Output length drawn per request instead of outputTokens."
    )
    shared_prefix: SharedPrefixSpec | None = None
    dataset: DatasetSpec | None = None
    tokenizer: TokenizerSpec | None = None
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _exclusive(self) -> Self:
        synthetic = (self.prompt_tokens, self.prompt_length, self.shared_prefix)
        _check(
            WORKLOAD_RULES,
            (
                self.prompt_tokens is not None and self.prompt_length is not None,
                self.output_tokens is not None and self.output_length is not None,
                self.dataset is not None and any(x is not None for x in synthetic),
            ),
        )
        return self

    @property
    def prompt(self) -> LengthDistribution:
        """The synthetic prompt length, as a distribution (``fixed`` for ``promptTokens``)."""
        if self.prompt_length is not None:
            return self.prompt_length
        return LengthDistribution(
            distribution="fixed", mean=self.prompt_tokens or DEFAULT_PROMPT_TOKENS
        )

    @property
    def output(self) -> LengthDistribution | None:
        """The output length the spec sets (None: not set, a dataset's rows decide)."""
        if self.output_length is not None:
            return self.output_length
        if self.output_tokens is not None:
            return LengthDistribution(distribution="fixed", mean=self.output_tokens)
        return None


# --------------------------------------------------------------------------- report


class ReportSpec(Spec):
    """How results are summarised."""

    percentiles: list[Annotated[float, Field(ge=0, le=100)]] = Field(
        default_factory=lambda: list(DEFAULT_PERCENTILES),
        min_length=1,
        max_length=MAX_PERCENTILES,
        description="Percentiles of every latency and token series in the full results "
        "(exact); status.results shows p50, p90, p95 and p99 and, in 'percentiles', the "
        "others while they fit its size bound.",
        json_schema_extra={"x-kubernetes-list-type": "set"},  # the API server: no duplicates
    )

    @field_validator("percentiles")
    @classmethod
    def _unique(cls, qs: list[float]) -> list[float]:
        if len(set(qs)) != len(qs):
            raise ValueError(f"percentiles must be unique, got {qs}")
        return qs
