"""The secret scanner finds a key in every form a leak takes, and nothing else."""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest
from secretscan import as_yaml, describe, scan

KEY = "sk-live-7Hq2pZ9xW4vR1tY8"


def test_a_clean_text_has_no_leak() -> None:
    text = as_yaml({"status": {"phase": "Succeeded", "message": "sk-live is a prefix only"}})
    assert scan(KEY, {"status": text}) == []


@pytest.mark.parametrize(
    ("text", "form"),
    [
        (f"Authorization: Bearer {KEY}\n", "plain"),
        (as_yaml({"data": {"token": base64.b64encode(KEY.encode()).decode()}}), "base64"),
        (base64.b64encode(f"Bearer {KEY}".encode()).decode(), "base64"),
        (base64.urlsafe_b64encode(f"xx{KEY}yy".encode()).decode(), "base64"),
        (json.dumps({"k": KEY + '"'}), "plain"),
    ],
)
def test_each_form_is_found(text: str, form: str) -> None:
    leaks = scan(KEY, {"src": "first line\n" + text})
    assert [x.form for x in leaks][:1] == [form], describe(leaks)
    assert KEY not in describe(leaks)  # reports never repeat the secret


def test_escaped_and_percent_forms_of_a_key_with_special_characters() -> None:
    key = 'pa"ss/w0rd+\\x'
    assert [x.form for x in scan(key, {"log": json.dumps({"k": key})})] == ["escaped"]
    assert [x.form for x in scan(key, {"url": urllib.parse.quote(key, safe="")})] == ["percent"]


def test_line_numbers_and_sources() -> None:
    leaks = scan(KEY, {"a": "x\ny\n" + KEY, "b": "nothing"})
    assert [(x.source, x.line) for x in leaks] == [("a", 3)]


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="shorter than 8"):
        scan("abc", {"a": "abc"})
