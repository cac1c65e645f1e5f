"""What a worker sends: the request body, the headers and the TLS context, from the spec.

:class:`RequestFormat` is ``spec.request`` as the client needs it; :class:`BodyTemplate`
encodes the JSON body once and splices the prompt and the output-token count in per
request (only the prompt, or a multi-turn conversation's messages, is encoded per call).
The body is, in this order: ``model``, ``messages`` (chat) or ``prompt`` (completions),
``stream``, ``stream_options`` (streaming with usage), every ``outputTokensFields`` name set
to the request's output-token count (the workload's ``max_tokens``), then ``extraBody``.

Secrets never pass through the spec: :func:`resolve_headers` takes the values of
``valueFrom`` headers and the API key from environment variables (the Job's
``secretKeyRef`` env, :func:`~benchop.core.names.header_env`) or from a secrets directory
(``DIR/<secret name>/<key>``: the layout of a mounted Secret, and of ``benchop run
--secrets-dir``), and :func:`tls_context` reads the TLS files from that directory.
Messages name the spec field and the file, never a value.

    fmt = RequestFormat.from_spec(spec)
    body = BodyTemplate(spec.target.model, "chat", fmt).body("a b c", 128)
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from benchop.api.models import BenchmarkRunSpec, SecretKeyRef, TlsSpec
from benchop.core.names import API_KEY_ENV, header_env, secret_file

__all__ = [
    "BodyTemplate",
    "RequestFormat",
    "SecretMissing",
    "resolve_headers",
    "tls_context",
]

_PROMPT = "\x00"  # placeholder of the prompt: a JSON string no prompt of ours is
_COUNT = -7_340_033  # placeholder of the output-token count


class SecretMissing(Exception):
    """A Secret the spec references cannot be read; the message names the field and where."""


@dataclass(frozen=True, slots=True)
class RequestFormat:
    """``spec.request``: streaming, usage, the output-length fields and the extra fields."""

    stream: bool = True
    include_usage: bool = True
    output_fields: tuple[str, ...] = ("max_tokens",)
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: BenchmarkRunSpec) -> RequestFormat:
        r = spec.request
        return cls(
            stream=r.stream,
            include_usage=r.include_usage,
            output_fields=tuple(r.output_tokens_fields),
            extra_body=dict(r.extra_body or {}),
        )

    def fields(
        self,
        model: str,
        api: Literal["chat", "completions"],
        prompt: str = _PROMPT,
        output_tokens: int = _COUNT,
        *,
        messages: bool = False,
    ) -> dict[str, Any]:
        """The body as a dict (by default with the placeholders of :class:`BodyTemplate`);
        with ``messages`` (chat), ``prompt`` stands for the whole ``messages`` list."""
        doc: dict[str, Any] = {"model": model}
        if api == "chat":
            doc["messages"] = prompt if messages else [{"role": "user", "content": prompt}]
        else:
            doc["prompt"] = prompt
        doc["stream"] = self.stream
        if self.stream and self.include_usage:
            doc["stream_options"] = {"include_usage": True}
        for name in self.output_fields:
            doc[name] = output_tokens
        doc.update(self.extra_body)
        return doc


class BodyTemplate:
    """The request body as bytes around the prompt and the output-token count.

    ``body`` sends the prompt as the one user message (chat) or the prompt (completions);
    ``body_messages`` (chat) sends a whole conversation (multi-turn datasets).

    >>> BodyTemplate("m", "completions", RequestFormat(stream=False)).body("hi", 4)
    b'{"model":"m","prompt":"hi","stream":false,"max_tokens":4}'
    >>> BodyTemplate("m", "chat", RequestFormat(include_usage=False)).body_messages(
    ...     [{"role": "user", "content": "hi"}], 4)
    b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":4}'
    """

    __slots__ = ("_api", "_encode", "_messages", "_prompt")

    def __init__(self, model: str, api: Literal["chat", "completions"], fmt: RequestFormat) -> None:
        self._encode = msgspec.json.Encoder().encode
        self._api = api
        self._prompt = self._split(fmt, model, api, messages=False)
        self._messages = self._split(fmt, model, api, messages=True) if api == "chat" else None

    def _split(
        self, fmt: RequestFormat, model: str, api: Literal["chat", "completions"], *, messages: bool
    ) -> tuple[list[bytes], list[bytes]]:
        """The body's bytes before and after the prompt's place, each split at the count."""
        encode = self._encode
        for k in range(1000):  # placeholders that occur nowhere else (extraBody may hold any)
            ph_prompt, ph_count = _PROMPT * (k + 1), _COUNT - k
            whole = encode(fmt.fields(model, api, ph_prompt, ph_count, messages=messages))
            prompt = encode(ph_prompt)
            count = b"%d" % ph_count
            if whole.count(prompt) == 1 and whole.count(count) == len(fmt.output_fields):
                break
        else:  # pragma: no cover - a body would have to hold 1000 placeholders
            raise ValueError("request.extraBody holds benchop's placeholders")
        before, _, after = whole.partition(prompt)
        return before.split(count), after.split(count)

    def body(self, prompt: str, output_tokens: int) -> bytes:
        """The body for ``prompt`` with every output-length field set to ``output_tokens``."""
        before, after = self._prompt
        n = b"%d" % output_tokens
        return b"".join((n.join(before), self._encode(prompt), n.join(after)))

    def body_messages(self, messages: list[dict[str, str]], output_tokens: int) -> bytes:
        """The chat body with these ``messages`` (``{"role", "content"}`` dicts)."""
        if self._messages is None:
            raise ValueError("messages need the chat API")
        before, after = self._messages
        n = b"%d" % output_tokens
        return b"".join((n.join(before), self._encode(messages), n.join(after)))


def _read_secret(ref: SecretKeyRef, where: str, secrets_dir: Path | None) -> bytes:
    if secrets_dir is None:
        raise SecretMissing(
            f"{where}: Secret {ref.name!r} key {ref.key!r} is not available here (benchop run: "
            "--secrets-dir DIR or BENCHOP_SECRETS_DIR, with DIR/<secret>/<key> files)"
        )
    path = secret_file(secrets_dir, ref.name, ref.key)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecretMissing(
            f"{where}: cannot read Secret {ref.name!r} key {ref.key!r} at {path} "
            f"({exc.strerror or exc}): does the Secret have that key?"
        ) from None


def _secret_text(
    ref: SecretKeyRef, where: str, env_name: str, env: Mapping[str, str], secrets_dir: Path | None
) -> str:
    """A Secret's value as header text: from ``env_name`` when set (the Job's secretKeyRef
    env), else from the secrets directory; a trailing newline (``echo key | base64``) is
    never part of it."""
    value = env.get(env_name)
    if value is None:
        value = _read_secret(ref, where, secrets_dir).decode("utf-8", "replace")
    value = value.strip()
    if not value or any(c in value for c in "\r\n\x00"):
        raise SecretMissing(f"{where}: the value of Secret {ref.name!r} key {ref.key!r} is "
                            "empty or holds a line break: not a header value")  # fmt: skip
    return value


def resolve_headers(
    spec: BenchmarkRunSpec,
    *,
    env: Mapping[str, str] | None = None,
    secrets_dir: Path | None = None,
) -> dict[str, str]:
    """Every header of the requests with its value: ``Authorization`` from the API key, then
    ``target.headers`` (Secrets from env or ``secrets_dir``); raises :class:`SecretMissing`."""
    env = os.environ if env is None else env
    target = spec.target
    out: dict[str, str] = {}
    if target.api_key_secret_ref is not None:
        key = _secret_text(
            target.api_key_secret_ref, "spec.target.apiKeySecretRef", API_KEY_ENV, env, secrets_dir
        )
        out["Authorization"] = f"Bearer {key}"
    for i, h in enumerate(target.headers or []):
        if h.value is not None:
            out[h.name] = h.value
        else:
            assert h.value_from is not None
            where = f"spec.target.headers[{i}] ({h.name})"
            out[h.name] = _secret_text(
                h.value_from.secret_key_ref, where, header_env(i), env, secrets_dir
            )
    return out


def tls_context(tls: TlsSpec | None, *, secrets_dir: Path | None = None) -> ssl.SSLContext:
    """The TLS context of ``https://`` targets: the system's CAs or ``caSecretRef``'s bundle,
    the client certificate and key (mTLS), or no verification at all (``insecureSkipVerify``).
    Raises :class:`SecretMissing`, or ``ValueError`` for files that are not PEM."""
    ctx = ssl.create_default_context()
    if tls is None:
        return ctx
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.ca_secret_ref is not None:
        where = "spec.target.tls.caSecretRef"
        pem = _read_secret(tls.ca_secret_ref, where, secrets_dir)
        try:
            ctx = ssl.create_default_context(cadata=pem.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"{where}: not a PEM CA bundle: {exc}") from None
    if tls.client_cert_secret_ref is not None and tls.client_key_secret_ref is not None:
        cert = tls.client_cert_secret_ref
        key = tls.client_key_secret_ref
        _read_secret(cert, "spec.target.tls.clientCertSecretRef", secrets_dir)
        _read_secret(key, "spec.target.tls.clientKeySecretRef", secrets_dir)
        assert secrets_dir is not None
        try:
            ctx.load_cert_chain(
                secret_file(secrets_dir, cert.name, cert.key),
                secret_file(secrets_dir, key.name, key.key),
            )
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                "spec.target.tls.clientCertSecretRef/clientKeySecretRef: not a PEM certificate "
                f"and its key: {exc}"
            ) from None
    return ctx
