"""Find a secret value in what a run leaves behind: status, events, logs, files.

Given the secret (an API key) and named texts (a run's status as YAML, ``kubectl get events``
output, container logs), :func:`scan` reports every place the secret shows up, in the forms a
leak takes: as is, base64 (as in a Secret's ``data``, also inside a longer encoded text such as
``Bearer <key>``), percent-encoded (in a URL) or escaped (JSON, a Python repr). Reports never
contain the secret itself.

    leaks = scan(KEY, {"status": yaml.safe_dump(run), "events": events, "worker-0": log})
    assert not leaks, describe(leaks)

Used by the emulator-based operator tests and local mode (tests/integration) and by the
real-control-plane tests (tests/cluster add this folder to ``sys.path``).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MIN_LENGTH = 8
"""Shorter secrets would match by chance."""


@dataclass(frozen=True)
class Leak:
    source: str  # the name the text was given
    form: str  # "plain", "base64", "percent", "escaped"
    line: int  # 1-based line of the first match
    excerpt: str  # the line with the match replaced by <secret:form>


def _base64_forms(secret: bytes) -> set[str]:
    """Substrings that every base64 encoding of a text containing ``secret`` holds, at each of
    the three alignments (standard and URL-safe alphabets); the parts of the encoding that
    depend on neighbouring bytes are left out."""
    out: set[str] = set()
    for k in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * k + secret).decode()
            start = -(-4 * k // 3)  # ceil: the first character fed by the secret alone
            end = 4 * ((k + len(secret)) // 3)  # the last whole group
            if end - start >= MIN_LENGTH:
                out.add(text[start:end])
    return out


def forms(secret: str) -> dict[str, set[str]]:
    """The strings to look for, by form."""
    if len(secret) < MIN_LENGTH:
        raise ValueError(f"a secret shorter than {MIN_LENGTH} characters would match by chance")
    escaped = {json.dumps(secret)[1:-1], repr(secret)[1:-1]} - {secret}
    percent = {urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)} - {secret}
    return {
        "plain": {secret},
        "base64": _base64_forms(secret.encode()),
        "percent": percent,
        "escaped": escaped,
    }


def scan(secret: str, sources: Mapping[str, str]) -> list[Leak]:
    """Every (source, form) in which ``secret`` shows up, with its first line."""
    leaks = []
    wanted = forms(secret)
    for name, text in sources.items():
        for form, needles in wanted.items():
            for needle in needles:
                at = text.find(needle)
                if at < 0:
                    continue
                line_no = text.count("\n", 0, at) + 1
                line = text.splitlines()[line_no - 1] if text else ""
                for n in (s for ns in wanted.values() for s in ns):
                    line = line.replace(n, f"<secret:{form}>")
                leaks.append(Leak(name, form, line_no, line[:300]))
                break
    return leaks


def describe(leaks: Iterable[Leak]) -> str:
    return "\n".join(f"{x.source}:{x.line}: {x.form}: {x.excerpt}" for x in leaks) or "no leak"


def as_yaml(obj: Any) -> str:
    """An object (a run with its status, a list of events) as the YAML ``kubectl get -o yaml``
    shows."""
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (logs, records, termination messages) by relative path;
    undecodable bytes replaced."""
    return {
        str(p.relative_to(root)): p.read_bytes().decode("utf-8", "replace")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
