"""The benchop API (``benchop.io/v1alpha1``) as pydantic v2 models.

One source of truth: the CRDs in ``crds/`` are generated from these classes by
``hack/gen_crds.py`` (see :mod:`benchop.api.crdgen`). Python attributes are
snake_case, the wire is camelCase (``spec.load.requestTimeout``); both names
are accepted on input, :func:`to_wire` writes camelCase.

Specs are strict (``extra="forbid"``, no ``"8"`` for an int, no ``"yes"`` for
a bool) so a model accepts what the CRD schema accepts. Rules a schema cannot
say live twice, on purpose: as a model validator and as a CEL rule
(``x-kubernetes-validations``) with the same message. Statuses ignore unknown
fields so an older reader tolerates a newer writer.

    >>> run = load_manifest(yaml.safe_load(open("examples/run.yaml")))
    >>> run.spec.load.request_timeout.seconds
    300.0
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from benchop.api.base import Spec, Status, cel
from benchop.api.durations import Duration
from benchop.api.sweep import set_path, sweep_points
from benchop.api.workload import ReportSpec, WorkloadSpec
from benchop.core.names import API_VERSION, MAX_WORKERS, ApiVersion

RESULTS_VERSION = 1
"""``status.results.version`` written by this code."""
METRICS_VERSION = 1
"""``status.metrics.version`` (the Experiment rollup) written by this code."""

# --------------------------------------------------------------------------- scalar types

# Printable ASCII only, spelled as ranges: ``\s`` is ASCII whitespace to the API server's RE2
# but also U+00A0, U+2028, \x1c.. to Python, which made the two disagree on such URLs.
# Hosts are punycode and paths percent-encoded anyway.
URL_PATTERN = r"^https?://[\x21-\x22\x24-\x2e\x30-\x3e\x40-\x7e]+([/?#][\x21-\x7e]*)?$"
URL_MAX_LENGTH = 2048
_URL = re.compile(URL_PATTERN)


def _check_url(value: str) -> str:
    if len(value) > URL_MAX_LENGTH or not _URL.fullmatch(value):
        raise ValueError(
            f"invalid URL {value!r}: expected http://host[:port][/path] or https://... "
            f"(printable ASCII, at most {URL_MAX_LENGTH} characters)"
        )
    return value


HttpUrl = Annotated[
    str,
    AfterValidator(_check_url),
    WithJsonSchema({"type": "string", "pattern": URL_PATTERN, "maxLength": URL_MAX_LENGTH}),
]
"""An absolute http(s) URL, kept as the string the user wrote."""

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)


def _check_quantity(value: object) -> int | str:
    if type(value) is int:
        return value
    if isinstance(value, str) and _QUANTITY.fullmatch(value):
        return value
    raise PydanticCustomError(
        "quantity",
        "Input should be a Kubernetes quantity: an integer or a string like '500m', '4Gi', '0.5'",
    )


Quantity = Annotated[
    int | str,
    PlainValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity: an int or a string (write fractions as strings: ``"0.5"``)."""

# --------------------------------------------------------------------------- bases


# --------------------------------------------------------------------------- spec: target


SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
SECRET_KEY_RULE = (
    "!self.key.startsWith('..') && self.key != '.'",
    "key: '.', '..' and keys starting with '..' are not Secret keys",
)


class SecretKeyRef(Spec, json_schema_extra=cel(SECRET_KEY_RULE)):
    """A key of a Secret in the run's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN)
    key: str = Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        if key == "." or key.startswith(".."):
            raise ValueError(SECRET_KEY_RULE[1].removeprefix("key: "))
        return key


SELECTOR_VALUES_RULE = (
    "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) "
    ": (!has(self.values) || size(self.values) == 0)"
)
SELECTOR_VALUES_MESSAGE = (
    "values must be non-empty for In and NotIn and empty for Exists and DoesNotExist"
)


class LabelSelectorRequirement(
    Spec, json_schema_extra=cel((SELECTOR_VALUES_RULE, SELECTOR_VALUES_MESSAGE))
):
    """One matchExpressions entry of a label selector."""

    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values_match_operator(self) -> Self:
        wants_values = self.operator in ("In", "NotIn")
        if wants_values != bool(self.values):
            raise ValueError(SELECTOR_VALUES_MESSAGE)
        return self


class LabelSelector(Spec):
    """A Kubernetes label selector (``matchLabels`` AND ``matchExpressions``)."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = Field(None, max_length=32)


HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
"""An HTTP header name (RFC 9110 token characters)."""
RESERVED_HEADERS = ("host", "content-length", "content-type", "transfer-encoding", "connection")
"""Headers benchop writes itself; a spec may not set them."""
HEADER_VALUE_RULE = (
    "has(self.value) != has(self.valueFrom)",
    "set exactly one of value or valueFrom",
)
HEADER_RESERVED_RULE = (
    "!self.name.matches('(?i)^(" + "|".join(RESERVED_HEADERS) + ")$')",
    "name: " + ", ".join(RESERVED_HEADERS) + " are set by benchop",
)


class HeaderValueSource(Spec):
    """Where a header's value comes from: a key of a Secret in the run's namespace."""

    secret_key_ref: SecretKeyRef


class HeaderSpec(Spec, json_schema_extra=cel(HEADER_VALUE_RULE, HEADER_RESERVED_RULE)):
    """One HTTP header sent with every request (and the preflight checks).

    A value from a Secret reaches the workers as a ``secretKeyRef`` environment variable
    (resolved by the kubelet; the operator never reads it) and is never written to status,
    events or logs.
    """

    name: str = Field(min_length=1, max_length=256, pattern=HEADER_NAME_PATTERN)
    value: str | None = Field(None, max_length=8192, pattern=r"^[^\r\n\x00]*$")
    value_from: HeaderValueSource | None = None

    @model_validator(mode="after")
    def _one_value(self) -> Self:
        if (self.value is None) == (self.value_from is None):
            raise ValueError(HEADER_VALUE_RULE[1])
        if self.name.lower() in RESERVED_HEADERS:
            raise ValueError(f"{HEADER_RESERVED_RULE[1]} (got {self.name!r})")
        return self


TLS_PAIR_RULE = (
    "has(self.clientCertSecretRef) == has(self.clientKeySecretRef)",
    "set both clientCertSecretRef and clientKeySecretRef (mTLS) or neither",
)
TLS_INSECURE_RULE = (
    "!(has(self.insecureSkipVerify) && self.insecureSkipVerify && has(self.caSecretRef))",
    "insecureSkipVerify verifies nothing: drop caSecretRef or insecureSkipVerify",
)


class TlsSpec(Spec, json_schema_extra=cel(TLS_PAIR_RULE, TLS_INSECURE_RULE)):
    """TLS of ``https://`` targets: a CA bundle and a client certificate (mTLS) from Secrets.

    The workers mount the keys as files (secret volumes); the operator never reads them.
    """

    ca_secret_ref: SecretKeyRef | None = Field(
        None,
        description="PEM CA bundle the server's certificate must chain to (default: "
        "the system's CAs).",
    )
    client_cert_secret_ref: SecretKeyRef | None = Field(
        None, description="PEM client certificate (chain) for mutual TLS."
    )
    client_key_secret_ref: SecretKeyRef | None = Field(
        None, description="PEM private key of the client certificate."
    )
    insecure_skip_verify: bool = Field(
        False,
        description="Do not verify the server's certificate or name. The results say so "
        "(results.request.insecureSkipVerify).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.client_cert_secret_ref is None) != (self.client_key_secret_ref is None):
            raise ValueError(TLS_PAIR_RULE[1])
        if self.insecure_skip_verify and self.ca_secret_ref is not None:
            raise ValueError(TLS_INSECURE_RULE[1])
        return self


MAX_TARGET_URLS = 64
MAX_HEADERS = 32
TARGET_RULES: tuple[tuple[str, str], ...] = (
    ("!(has(self.url) && has(self.urls))", "set url or urls, not both"),
    (
        "!has(self.tls) || (has(self.url) && self.url.startsWith('https://')) || "
        "(has(self.urls) && self.urls.all(u, u.startsWith('https://')))",
        "tls is for https:// targets: every URL must start with https://",
    ),
    (
        "!has(self.apiKeySecretRef) || !has(self.headers) || "
        "!self.headers.exists(h, h.name.matches('(?i)^authorization$'))",
        "headers: Authorization is already set by apiKeySecretRef",
    ),
)


class TargetSpec(Spec, json_schema_extra=cel(*TARGET_RULES)):
    """The OpenAI-compatible server under test."""

    url: HttpUrl | None = Field(
        None,
        description="Base URL, e.g. http://vllm.default.svc:8000/v1. Required by the operator "
        "(or urls); local mode uses its mock server when neither is set.",
    )
    urls: list[HttpUrl] | None = Field(
        None,
        min_length=1,
        max_length=MAX_TARGET_URLS,
        description="Several base URLs of one model (replicas behind no load balancer): each "
        "worker sends its requests to them in turn, starting at its own index.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    model: str = Field(min_length=1, description="Model name sent in each request.")
    api: Literal["chat", "completions"] = "chat"
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Sent as Authorization: Bearer <key>."
    )
    headers: list[HeaderSpec] | None = Field(
        None,
        max_length=MAX_HEADERS,
        description="Headers of every request, e.g. an x-api-key from a Secret.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    tls: TlsSpec | None = None
    pod_selector: LabelSelector | None = Field(
        None, description="Pods of the model server, whose GPUs are observed."
    )

    @model_validator(mode="after")
    def _target_rules(self) -> Self:
        if self.url is not None and self.urls is not None:
            raise ValueError(TARGET_RULES[0][1])
        if self.urls is not None and len(set(self.urls)) != len(self.urls):
            raise ValueError(f"urls: each URL once (got {self.urls})")
        if self.tls is not None and not all(u.startswith("https://") for u in self.endpoints):
            raise ValueError(TARGET_RULES[1][1])
        names = [h.name.lower() for h in self.headers or []]
        if len(set(names)) != len(names):
            raise ValueError(f"headers: each name once, in any case (got {names})")
        if self.api_key_secret_ref is not None and "authorization" in names:
            raise ValueError(TARGET_RULES[2][1])
        return self

    @property
    def endpoints(self) -> list[str]:
        """The base URLs requests go to (``urls``, or ``[url]``; empty for local mode's mock)."""
        if self.urls is not None:
            return list(self.urls)
        return [self.url] if self.url is not None else []


# --------------------------------------------------------------------------- spec: request

BENCHOP_BODY_FIELDS = ("model", "messages", "prompt", "stream", "stream_options")
"""Request-body fields benchop writes; ``extraBody`` may not set them."""
MAX_EXTRA_BODY_BYTES = 16_384
BODY_FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
OUTPUT_FIELDS_RULE = (
    "!has(self.outputTokensFields) || self.outputTokensFields.all(f, !(f in "
    + json.dumps(list(BENCHOP_BODY_FIELDS))
    + "))",
    "outputTokensFields: " + ", ".join(BENCHOP_BODY_FIELDS) + " are set by benchop",
)


class RequestSpec(Spec, json_schema_extra=cel(OUTPUT_FIELDS_RULE)):
    """The body of every request: streaming, usage, output length fields, extra fields.

    Sent as JSON: ``model``, ``messages`` (chat) or ``prompt`` (completions), ``stream``,
    ``stream_options`` (streaming with ``includeUsage``), each of ``outputTokensFields`` set to
    the request's output length (``workload.outputTokens``, a draw of ``outputLength`` or the
    dataset's), then ``extraBody``. Nothing else: ``ignore_eos`` is sent only
    when ``extraBody`` has it (docs/request.md: fixed output lengths per server).
    """

    stream: bool = Field(
        True,
        description="Stream the response (SSE). Off: one JSON answer; TTFT = E2E, no ITL, "
        "tokens from usage.",
    )
    include_usage: bool = Field(
        True,
        description="Ask for a usage chunk (stream_options.include_usage) when streaming. Off "
        "for servers that refuse stream_options: benchop then counts the tokens (with "
        "workload.tokenizer, or content chunks and words; results.tokens.source says which).",
    )
    output_tokens_fields: list[Annotated[str, Field(pattern=BODY_FIELD_PATTERN)]] = Field(
        default_factory=lambda: ["max_tokens"],
        min_length=1,
        max_length=4,
        description="Body fields set to each request's output length (workload.outputTokens, "
        "outputLength or the dataset's), e.g. [max_tokens, min_tokens] "
        "for fixed output lengths on vLLM, or [max_completion_tokens].",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    extra_body: dict[str, Any] | None = Field(
        None,
        description="Fields merged into every request body: sampling parameters, ignore_eos, "
        "vendor extensions (nvext). Not model, messages, prompt, stream, stream_options or an "
        "outputTokensFields name.",
    )

    @field_validator("output_tokens_fields")
    @classmethod
    def _output_fields(cls, fields: list[str]) -> list[str]:
        if len(set(fields)) != len(fields):
            raise ValueError(f"each name once (got {fields})")
        for f in fields:
            if f in BENCHOP_BODY_FIELDS:
                raise ValueError(OUTPUT_FIELDS_RULE[1].removeprefix("outputTokensFields: "))
        return fields

    @model_validator(mode="after")
    def _extra_body(self) -> Self:
        if not self.extra_body:
            return self
        taken = set(BENCHOP_BODY_FIELDS) | set(self.output_tokens_fields)
        clash = sorted(k for k in self.extra_body if k in taken)
        if clash:
            hint = {
                "stream": "use request.stream",
                "stream_options": "use request.includeUsage",
                "model": "use target.model",
                "messages": "benchop writes the prompt",
                "prompt": "benchop writes the prompt",
            }
            why = "; ".join(
                f"{k}: {hint.get(k, 'set to the output length by outputTokensFields')}"
                for k in clash
            )
            raise ValueError(f"extraBody may not set {', '.join(clash)} ({why})")
        try:
            size = len(json.dumps(self.extra_body, allow_nan=False))
        except ValueError as exc:
            raise ValueError(f"extraBody is not JSON: {exc}") from None
        if size > MAX_EXTRA_BODY_BYTES:
            raise ValueError(f"extraBody is {size} bytes as JSON, at most {MAX_EXTRA_BODY_BYTES}")
        return self


class PreflightSpec(Spec):
    """Checks of the target before warmup; a failure ends the run with its reason.

    TCP connect to every URL (retried until ``timeout``), ``GET /models`` lists the model (a
    server without the route is a warning), one request of one output token (both wait up to
    ``load.requestTimeout``). Reasons: ``TargetUnreachable``, ``ModelNotFound``,
    ``TargetError`` (docs/request.md).
    """

    enabled: bool = True
    timeout: Duration = Field(
        Duration("2s"),
        description="How long connecting may be retried before the run fails "
        "TargetUnreachable; raise it to wait for a server that is still starting.",
    )


# --------------------------------------------------------------------------- spec: load


LOAD_RULES: tuple[tuple[str, str], ...] = (
    (
        "self.mode != 'concurrency' || has(self.concurrency)",
        "concurrency is required when mode is concurrency",
    ),
    ("self.mode != 'rate' || has(self.rate)", "rate is required when mode is rate"),
    (
        "self.mode == 'concurrency' || !has(self.concurrency)",
        "concurrency is only allowed when mode is concurrency",
    ),
    ("self.mode == 'rate' || !has(self.rate)", "rate is only allowed when mode is rate"),
    (
        "self.mode == 'rate' || !has(self.maxInFlight)",
        "maxInFlight is only allowed when mode is rate",
    ),
)


class LoadSpec(Spec, json_schema_extra=cel(*LOAD_RULES)):
    """How requests are issued: a fixed concurrency, or a request rate."""

    mode: Literal["concurrency", "rate"] = "concurrency"
    concurrency: int | None = Field(
        None, ge=1, description="Requests in flight (mode=concurrency), across all workers."
    )
    rate: float | None = Field(
        None, gt=0, description="Requests per second (mode=rate), across all workers."
    )
    arrival: Literal["constant", "poisson"] = Field(
        "poisson", description="Inter-arrival times in rate mode."
    )
    workers: int = Field(
        1, ge=1, le=MAX_WORKERS, description="Load-generator pods; load is split evenly."
    )
    request_timeout: Duration = Duration("300s")
    max_in_flight: int | None = Field(
        None, ge=1, description="Cap on requests in flight in rate mode."
    )
    max_failure_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="End the run early (FailureRatioExceeded) when more than this share of a "
        "worker's last failureWindow requests failed; 1 never ends it.",
    )
    failure_window: int = Field(
        50, ge=1, le=100_000, description="Requests per worker maxFailureRatio looks back on."
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> Self:
        present = {
            "concurrency": self.concurrency is not None,
            "rate": self.rate is not None,
            "maxInFlight": self.max_in_flight is not None,
        }
        for (_, message), broken in zip(
            LOAD_RULES,
            (
                self.mode == "concurrency" and not present["concurrency"],
                self.mode == "rate" and not present["rate"],
                self.mode != "concurrency" and present["concurrency"],
                self.mode != "rate" and present["rate"],
                self.mode != "rate" and present["maxInFlight"],
            ),
            strict=True,
        ):
            if broken:
                raise ValueError(message)
        return self


PHASE_BOUND_RULE = (
    "has(self.requests) != has(self.duration)",
    "set exactly one of requests or duration",
)


class PhaseBound(Spec, json_schema_extra=cel(PHASE_BOUND_RULE)):
    """When a phase ends: after a number of completed requests, or after a duration."""

    requests: int | None = Field(None, ge=1)
    duration: Duration | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.requests is None) == (self.duration is None):
            raise ValueError(PHASE_BOUND_RULE[1])
        return self


class PhasesSpec(Spec):
    """Warmup (optional, not measured) then profiling (measured)."""

    warmup: PhaseBound | None = None
    profiling: PhaseBound


class GatesSpec(Spec):
    """GPU baselines at the profiling boundaries."""

    baseline: bool = Field(True, description="Take START/END GPU baselines on the target's nodes.")
    timeout: Duration = Field(Duration("5s"), description="How long a gate waits for agents.")


class SloSpec(Spec):
    """Per-request objectives; goodput is the share of requests meeting all of them."""

    ttft_ms: float | None = Field(None, gt=0)
    itl_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0, alias="e2eMs")  # to_camel would say e2EMs


class PrometheusSpec(Spec):
    """Where GPU rollups and live stats are queried."""

    url: HttpUrl


# --------------------------------------------------------------------------- spec: output

PVC_PATH_PATTERN = r"^([A-Za-z0-9_.-]+)(/[A-Za-z0-9_.-]+)*$"
PVC_PATH_RULE = (
    "!(self in ['.', '..'] || self.startsWith('./') || self.startsWith('../') || "
    "self.endsWith('/.') || self.endsWith('/..') || self.contains('/./') || "
    "self.contains('/../'))",
    "subPath must be a relative path without '.' or '..' segments",
)


class PvcOutput(Spec):
    """An existing PersistentVolumeClaim in the run's namespace that receives the bundle.

    The workers mount it and write their records under ``<subPath>/<namespace>.<name>.<uid8>/``
    (``worker-<i>/``); after the run a collect pod merges them there into ``records.jsonl``,
    ``results.json`` and ``timeseries.csv``. With more than one worker the claim must be
    mountable by every worker pod at once (ReadWriteMany, or all workers on one node).
    """

    claim_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of the PersistentVolumeClaim (in the run's namespace).",
    )
    sub_path: str | None = Field(
        None,
        max_length=512,
        pattern=PVC_PATH_PATTERN,
        description="Directory inside the volume under which bundles go (default: its root).",
        json_schema_extra=cel(PVC_PATH_RULE),
    )

    @field_validator("sub_path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and any(p in (".", "..") for p in value.split("/")):
            raise ValueError(PVC_PATH_RULE[1])
        return value


class OutputSpec(Spec):
    """Where the results bundle goes beyond the status (docs/results.md).

    Always: ``results.json`` and ``timeseries.csv`` in the ConfigMap ``<run>-results``
    (size-capped: coarser timeseries rows when long). With ``pvc``: the whole bundle,
    per-request ``records.jsonl`` included, on that volume.
    """

    pvc: PvcOutput | None = None


# --------------------------------------------------------------------------- spec: pods


class ResourceRequirements(Spec):
    """Container resources of the load-generator pods."""

    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class Toleration(Spec):
    """A Kubernetes toleration."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class PodOverrides(Spec):
    """Overrides for the load-generator pods."""

    image: str | None = Field(
        None,
        min_length=1,
        description="The operator's load-generator image or one it allows (--allowed-image); "
        "any other is refused with Accepted=False.",
    )
    resources: ResourceRequirements | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None


class BenchmarkRunSpec(Spec):
    """One measurement of one server."""

    target: TargetSpec
    request: RequestSpec = Field(default_factory=RequestSpec)
    preflight: PreflightSpec = Field(default_factory=PreflightSpec)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    load: LoadSpec
    phases: PhasesSpec
    gates: GatesSpec = Field(default_factory=GatesSpec)
    slo: SloSpec | None = None
    report: ReportSpec | None = None
    prometheus: PrometheusSpec | None = None
    pod: PodOverrides | None = None
    output: OutputSpec | None = None
    active_deadline_seconds: int | None = Field(None, ge=1)
    ttl_seconds_after_finished: int | None = Field(None, ge=0)


# --------------------------------------------------------------------------- status


class Phase(StrEnum):
    """``status.phase`` of a BenchmarkRun."""

    PENDING = "Pending"
    INITIALIZING = "Initializing"
    WARMUP = "Warmup"
    PROFILING = "Profiling"
    FINALIZING = "Finalizing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Status):
    """metav1.Condition shape; see :mod:`benchop.api.conditions` for the types."""

    type: str = Field(min_length=1)
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: str = Field(description="RFC 3339, e.g. 2024-05-01T12:00:00Z")
    observed_generation: int | None = None


def _conditions_field() -> Any:
    return Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class LiveStatus(Status):
    """Bounded live view, rewritten at most every few seconds while running."""

    updated_at: str | None = None
    phase: Phase | None = None
    workers_connected: int | None = None
    requests: int | None = None
    errors: int | None = None
    rps: float | None = None
    output_tok_per_s: float | None = None
    ttft_p50_ms: float | None = None
    itl_p50_ms: float | None = None
    in_flight: int | None = None
    gpu: dict[str, Any] | None = Field(
        None, description="Live GPU stats from Prometheus (free-form)."
    )


class RequestCounts(Status):
    """Requests of the profiling phase."""

    total: int
    ok: int
    failed: int
    by_reason: dict[str, int] = Field(default_factory=dict)


class Throughput(Status):
    """Throughput over the profiling window."""

    rps: float
    output_tok_per_s: float
    input_tok_per_s: float


class LatencyStats(Status):
    """Exact statistics of one latency series, in milliseconds."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float | None = None  # None in results written before p95 was added
    p99: float
    percentiles: dict[str, float] | None = Field(
        None,
        description="spec.report.percentiles other than p50/p90/p95/p99, keyed 'p99.9' "
        "(left out when the results outgrow their size bound).",
    )


class TokenCounting(Status):
    """How token counts were obtained (prompt lengths, and counts the server did not report)."""

    source: Literal["usage", "tokenizer", "estimate", "mixed"] = Field(
        description="usage: every ok request's counts are the server's usage; tokenizer or "
        "estimate: none are, benchop counted (with the tokenizer, or the prompt's words and "
        "the answer's content chunks); mixed: some of each."
    )
    tokenizer: str | None = Field(
        None, description="The tokenizer benchop used; absent: word and chunk estimates."
    )
    from_usage: int = Field(0, description="Ok requests whose counts are the server's usage.")
    tokens_per_chunk: float | None = Field(
        None,
        description="Usage tokens per content chunk (streamed, every count from usage): above "
        "1 the server sends several tokens per chunk and itlMs is per chunk.",
    )


class Goodput(Status):
    """Share and rate of requests that met every SLO."""

    ratio: float = Field(ge=0, le=1)
    rps: float
    slo: SloSpec


class GpuResults(Status):
    """GPU numbers for the profiling window, from the agents' baselines."""

    util_mean: float | None = None
    power_mean_w: float | None = None
    energy_j: float | None = None
    joules_per_output_token: float | None = None
    mem_peak_bytes: int | None = None
    gpus: int = 0
    simulated: bool = False
    agents: list[str] = Field(default_factory=list)
    missing_agents: list[str] = Field(default_factory=list)
    prometheus: dict[str, Any] | None = Field(None, description="Prometheus rollups (free-form).")


class ClientStats(Status):
    """Load-generator health: a saturated client under-reports the server."""

    cpu_pct: float | None = None
    connect_attempts: int | None = None  # TCP connects, every phase and the preflight
    connect_failures: int | None = None
    recv_lag_p99_ms: float | None = None
    send_lag_p99_ms: float | None = None  # open loop: actual minus scheduled send time
    saturated: bool = False
    reason: str | None = None


class RequestResults(Status):
    """How the requests were made (how their tokens were counted: :class:`TokenCounting`)."""

    stream: bool = True
    finish_reasons: dict[str, int] = Field(
        default_factory=dict, description="finish_reason of the ok requests (length, stop, ...)."
    )
    endpoints: int = 1
    insecure_skip_verify: bool = False
    warnings: list[str] = Field(default_factory=list)


class Results(Status):
    """Final results, written once; ``version`` is the format version."""

    version: int = RESULTS_VERSION
    complete: bool
    source: Literal["pubsub", "terminationMessage", "live", "local"]
    duration_s: float
    requests: RequestCounts
    throughput: Throughput
    ttft_ms: LatencyStats | None = None
    itl_ms: LatencyStats | None = None
    tpot_ms: LatencyStats | None = None
    e2e_ms: LatencyStats | None = Field(None, alias="e2eMs")
    goodput: Goodput | None = None
    gpu: GpuResults | None = None
    client: ClientStats | None = None
    request: RequestResults | None = None
    tokens: TokenCounting | None = None
    workers: int


class OutputStatus(Status):
    """Where the run's results bundle is (docs/results.md); ``benchop results NAME`` reads it."""

    config_map: str | None = Field(
        None, description="ConfigMap with results.json and timeseries.csv (size-capped)."
    )
    timeseries_interval_s: int | None = Field(
        None, description="Seconds per timeseries.csv row in the ConfigMap (0: left out)."
    )
    claim_name: str | None = Field(None, description="PersistentVolumeClaim with the bundle.")
    path: str | None = Field(
        None, description="The bundle's directory: inside the claim, or local (benchop run)."
    )
    collect_job: str | None = Field(
        None, description="Job that merges the workers' files on the claim into the bundle."
    )
    error: str | None = Field(None, description="Why the bundle could not be written.")


class BenchmarkRunStatus(Status):
    """Written by the operator only (or by local mode)."""

    phase: Phase | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = _conditions_field()
    start_time: str | None = None
    completion_time: str | None = None
    live: LiveStatus | None = None
    results: Results | None = None
    output: OutputStatus | None = None
    gates: dict[str, Any] | None = Field(
        None,
        description="Closed phase gates (START/END) with their baseline acks; the operator "
        "restores its gate coordinator from them after a restart.",
    )


# --------------------------------------------------------------------------- experiment


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every camelCase field path of ``model``, objects and leaves, depth first."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        out.append(path)
        for arg in (info.annotation, *get_args(info.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out.extend(_field_paths(arg, path + "."))
    return out


SWEEPABLE_PATHS: tuple[str, ...] = tuple(_field_paths(BenchmarkRunSpec))
"""Paths a sweep axis may set (``load.concurrency``, ``phases.profiling``, ...)."""

MAX_SWEEP_AXES = 8
"""Most axes one sweep may have. The apiserver multiplies a CEL rule's estimated cost by the
longest list the rule could meet and refuses the CRD over budget: the path rule of each axis
needs this bound."""
MAX_SWEEP_VALUES = 1000
"""Most values one axis may take (the whole sweep is capped at 1000 runs by the operator)."""

SWEEP_PATH_RULE = (
    f"self.path in {json.dumps(list(SWEEPABLE_PATHS))}",
    "path must name a field of a BenchmarkRun spec, such as load.concurrency",
)


class SweepAxis(Spec, json_schema_extra=cel(SWEEP_PATH_RULE)):
    """One swept field: ``path`` (camelCase, dotted, relative to the spec) takes each value."""

    path: str = Field(max_length=256)
    values: list[Any] = Field(min_length=1, max_length=MAX_SWEEP_VALUES)

    @field_validator("path")
    @classmethod
    def _known_path(cls, path: str) -> str:
        if path not in SWEEPABLE_PATHS:
            raise ValueError(f"{SWEEP_PATH_RULE[1]} (got {path!r})")
        return path


Load = Annotated[int | float, WithJsonSchema({"type": "number"})]
"""A load a search probes: an integer concurrency or a request rate."""

MAX_PROBES = 50
"""Most probes one SLO search may run (``spec.search.maxProbes``)."""

RANGE_RULE = ("self.min <= self.max", "min must be <= max")


def _check_range(lo: float, hi: float) -> None:
    if lo > hi:
        raise ValueError(RANGE_RULE[1])


class ConcurrencySearch(Spec, json_schema_extra=cel(RANGE_RULE)):
    """The concurrencies an SLO search may probe (integers)."""

    min: int = Field(1, ge=1, description="The first probe and the lowest load tried.")
    max: int = Field(ge=1, le=1_000_000, description="The highest load tried.")
    resolution: int = Field(
        1,
        ge=1,
        description="Bisection stops when the knee and the lowest failing load are "
        "at most this far apart (1: the knee is exact).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _check_range(self.min, self.max)
        return self


class RateSearch(Spec, json_schema_extra=cel(RANGE_RULE)):
    """The request rates (req/s) an SLO search may probe."""

    min: float = Field(gt=0, description="The first probe and the lowest rate tried.")
    max: float = Field(gt=0, description="The highest rate tried.")
    resolution: float = Field(
        gt=0,
        description="Bisection stops when the knee and the lowest failing rate are at "
        "most this far apart.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _check_range(self.min, self.max)
        return self


SEARCH_ONE_RULE = (
    "has(self.concurrency) != has(self.rate)",
    "set exactly one of concurrency or rate",
)


class SearchSpec(Spec, json_schema_extra=cel(SEARCH_ONE_RULE)):
    """An SLO search: the highest load whose goodput stays >= minGoodput (docs/experiments.md)."""

    concurrency: ConcurrencySearch | None = Field(
        None, description="Search the concurrency (template.load.mode concurrency)."
    )
    rate: RateSearch | None = Field(
        None, description="Search the request rate (template.load.mode rate)."
    )
    min_goodput: float = Field(
        gt=0, le=1, description="Target: the share of requests meeting template.slo, 0..1."
    )
    growth: float = Field(2.0, gt=1, le=100, description="Load factor between bracketing probes.")
    max_probes: int = Field(12, ge=2, le=MAX_PROBES, description="Most probes (child runs).")

    @model_validator(mode="after")
    def _one_range(self) -> Self:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError(SEARCH_ONE_RULE[1])
        return self

    @property
    def path(self) -> str:
        """The field each probe sets: ``load.concurrency`` or ``load.rate``."""
        return "load.concurrency" if self.concurrency is not None else "load.rate"

    @property
    def range(self) -> ConcurrencySearch | RateSearch:
        bounds = self.concurrency if self.concurrency is not None else self.rate
        assert bounds is not None  # _one_range
        return bounds


EXPERIMENT_RULES: tuple[tuple[str, str], ...] = (
    ("has(self.sweep) != has(self.search)", "set exactly one of sweep or search"),
    (
        "!has(self.search) || has(self.template.slo)",
        "search needs template.slo: goodput is measured against it",
    ),
    (
        "!has(self.search) || has(self.search.concurrency) == "
        "((has(self.template.load.mode) ? self.template.load.mode : 'concurrency') "
        "== 'concurrency')",
        "search.concurrency needs template.load.mode concurrency, search.rate mode rate",
    ),
    (
        "!has(self.search) || ((!has(self.maxParallel) || self.maxParallel == 1) && "
        "(!has(self.failurePolicy) || self.failurePolicy == 'continue') && "
        "!has(self.maxFailures))",
        "a search runs one probe at a time: maxParallel, failurePolicy and maxFailures are "
        "for a sweep",
    ),
)


class ExperimentSpec(Spec, json_schema_extra=cel(*EXPERIMENT_RULES)):
    """BenchmarkRuns from one template: a sweep (every point of its axes) or an SLO search."""

    template: BenchmarkRunSpec
    sweep: list[SweepAxis] | None = Field(
        None,
        min_length=1,
        max_length=MAX_SWEEP_AXES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["path"]},
    )
    search: SearchSpec | None = None
    max_parallel: int = Field(1, ge=1)
    failure_policy: Literal["continue", "abort"] = "continue"
    max_failures: int | None = Field(None, ge=0)

    @field_validator("sweep")
    @classmethod
    def _valid_axes(
        cls, sweep: list[SweepAxis] | None, info: ValidationInfo
    ) -> list[SweepAxis] | None:
        if sweep is None:
            return None
        paths = [axis.path for axis in sweep]
        if len(set(paths)) != len(paths):
            raise ValueError(f"sweep paths must be unique, got {paths}")
        template = info.data.get("template")
        if template is None:  # template itself failed; that error is reported
            return sweep
        base = to_wire(template)
        for i, axis in enumerate(sweep):
            for j, value in enumerate(axis.values):
                try:
                    BenchmarkRunSpec.model_validate(set_path(base, axis.path, value))
                except ValidationError as err:
                    raise ValueError(
                        f"sweep[{i}].values[{j}]: {axis.path}={json.dumps(value)} makes the "
                        f"template invalid: {format_validation_error(err)}"
                    ) from None
        return sweep

    @model_validator(mode="after")
    def _mode(self) -> Self:
        messages = [m for _, m in EXPERIMENT_RULES]
        search = self.search
        if (self.sweep is None) == (search is None):
            raise ValueError(messages[0])
        if search is None:
            return self
        if self.template.slo is None:
            raise ValueError(messages[1])
        if (search.concurrency is not None) != (self.template.load.mode == "concurrency"):
            raise ValueError(messages[2])
        if (
            self.max_parallel != 1
            or self.failure_policy != "continue"
            or self.max_failures is not None
        ):
            raise ValueError(messages[3])
        for bound in ("min", "max"):
            value = getattr(search.range, bound)
            try:
                self.probe(value)
            except ValidationError as err:
                raise ValueError(
                    f"search.{search.path.split('.')[1]}.{bound}: {search.path}="
                    f"{json.dumps(value)} makes the template invalid: "
                    f"{format_validation_error(err)}"
                ) from None
        return self

    def probe(self, value: int | float) -> tuple[dict[str, Any], BenchmarkRunSpec]:
        """A search probe at ``value``: its params ``{path: value}`` and its run spec."""
        assert self.search is not None
        params = {self.search.path: value}
        return params, BenchmarkRunSpec.model_validate(
            set_path(to_wire(self.template), self.search.path, value)
        )

    def points(self) -> list[tuple[dict[str, Any], BenchmarkRunSpec]]:
        """Each run of the sweep as (params ``{path: value}``, its spec), first axis slowest;
        none for a search (its probes are chosen as it goes)."""
        if self.sweep is None:
            return []
        base = to_wire(self.template)
        out = []
        for params in sweep_points([(a.path, a.values) for a in self.sweep]):
            doc = base
            for path, value in params.items():
                doc = set_path(doc, path, value)
            out.append((params, BenchmarkRunSpec.model_validate(doc)))
        return out


class ExperimentPhase(StrEnum):
    """``status.phase`` of an Experiment."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ExperimentCounts(Status):
    """How many child runs are in each state."""

    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0


class ExperimentRunRow(Status):
    """Headline numbers of one child run (latencies in ms)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    phase: Phase | None = None
    rps: float | None = None
    tok_per_s: float | None = None
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    itl_p50: float | None = None
    goodput: float | None = None
    gpu_util: float | None = None
    joules_per_token: float | None = None


SearchOutcome = Literal["Searching", "KneeFound", "AtMax", "ProbeLimit", "BelowMin"]


class SearchProbe(Status):
    """One probe of an SLO search (its other numbers are in the run's row of ``runs``)."""

    run: str
    value: Load
    phase: Phase | None = None
    goodput: float | None = None
    passed: bool | None = Field(None, description="goodput >= minGoodput; null while running")


class ExperimentSearch(Status):
    """Where an SLO search stands: the knee, the first load above it that failed, each probe."""

    path: str = Field(description="load.concurrency or load.rate")
    min_goodput: float
    outcome: SearchOutcome = Field(
        description="Searching; KneeFound (knee and limit within resolution); AtMax (max "
        "passed); ProbeLimit (maxProbes used first); BelowMin (min missed the target)"
    )
    knee: Load | None = Field(None, description="Highest load meeting the target, all below too.")
    knee_run: str | None = None
    limit: Load | None = Field(None, description="Lowest load probed that missed the target.")
    limit_run: str | None = None
    monotone: bool = Field(True, description="False when a load above limit met the target again.")
    message: str = ""
    probes: list[SearchProbe] = Field(default_factory=list, description="In the order run.")


class ExperimentMetrics(Status):
    """Denormalized, size-bounded rollup of the child runs."""

    version: int = METRICS_VERSION
    refreshed_at: str | None = None
    capped: bool = Field(False, description="True when runs was truncated to stay bounded.")
    runs: list[ExperimentRunRow] = Field(default_factory=list)
    best: dict[str, str] = Field(default_factory=dict, description="objective -> run name")
    search: ExperimentSearch | None = Field(None, description="An SLO search's result.")


class ExperimentStatus(Status):
    """Written by the operator only."""

    phase: ExperimentPhase | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = _conditions_field()
    counts: ExperimentCounts | None = None
    metrics: ExperimentMetrics | None = None
    start_time: str | None = None
    completion_time: str | None = None


# --------------------------------------------------------------------------- resources


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta benchop reads; everything else is kept as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class _Resource(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class BenchmarkRun(_Resource):
    """A BenchmarkRun: one load test of an OpenAI-compatible server; results land in status."""

    api_version: ApiVersion = API_VERSION
    kind: Literal["BenchmarkRun"] = "BenchmarkRun"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: BenchmarkRunSpec
    status: BenchmarkRunStatus | None = None


class Experiment(_Resource):
    """An Experiment: a sweep of BenchmarkRuns from one template; the rollup lands in status."""

    api_version: ApiVersion = API_VERSION
    kind: Literal["Experiment"] = "Experiment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ExperimentSpec
    status: ExperimentStatus | None = None


# --------------------------------------------------------------------------- helpers


def load_manifest(data: Mapping[str, Any]) -> BenchmarkRun | Experiment:
    """Validate a manifest dict by its ``kind``; raises ``ValidationError``.

    >>> load_manifest({"kind": "Experiment", ...}).spec.sweep[0].path
    """
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind == "BenchmarkRun":
        return BenchmarkRun.model_validate(data)
    if kind == "Experiment":
        return Experiment.model_validate(data)
    raise ValidationError.from_exception_data(
        "manifest",
        [
            InitErrorDetails(
                type=PydanticCustomError("kind", "kind should be 'BenchmarkRun' or 'Experiment'"),
                loc=("kind",),
                input=kind,
            )
        ],
    )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def format_validation_error(err: ValidationError) -> str:
    """One line per error: ``spec.load.concurrency: Input should be ... (got -3)``.

    Paths are dotted camelCase with ``[i]`` for list items; a scalar input is
    echoed unless the message already quotes it.
    """
    lines = []
    for e in err.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if e["type"] not in ("missing", "value_error") and (
            value is None or isinstance(value, str | int | float | bool)
        ):
            msg += f" (got {json.dumps(value)})"
        lines.append(f"{_loc(tuple(e['loc'])) or '<root>'}: {msg}")
    return "\n".join(lines)


def to_wire(model: BaseModel) -> dict[str, Any]:
    """The camelCase JSON-ready dict of a model, without unset (None) fields."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
