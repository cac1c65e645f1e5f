"""``benchop run``'s manifest reader: several documents, and errors that point at the spot."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchop.api.models import BenchmarkRun, Experiment
from benchop.local.manifests import ManifestError, load_manifests

ROOT = Path(__file__).resolve().parents[2]
RUN = (ROOT / "examples" / "run.yaml").read_text()
EXPERIMENT = (ROOT / "examples" / "experiment.yaml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return path


def renamed(text: str, name: str) -> str:
    doc = yaml.safe_load(text)
    doc["metadata"]["name"] = name
    return yaml.safe_dump(doc)


def test_one_document(tmp_path: Path) -> None:
    [run] = load_manifests(write(tmp_path, RUN))
    assert isinstance(run, BenchmarkRun) and run.metadata.name == "mock-c8"


def test_several_documents_in_file_order_empty_ones_skipped(tmp_path: Path) -> None:
    text = f"---\n{renamed(RUN, 'b')}---\n{EXPERIMENT}\n---\n{renamed(RUN, 'a')}---\n"
    manifests = load_manifests(write(tmp_path, text))
    assert [(m.kind, m.metadata.name) for m in manifests] == [
        ("BenchmarkRun", "b"),
        ("Experiment", "mock-concurrency-sweep"),
        ("BenchmarkRun", "a"),
    ]
    assert isinstance(manifests[1], Experiment)


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    lines = RUN.splitlines()
    bad = lines.index("  load:") + 2  # 1-based line of "    mode: concurrency"
    lines[bad - 1] = "    mode: concurrency: 3"
    path = write(tmp_path, "\n".join(lines))
    with pytest.raises(ManifestError) as info:
        load_manifests(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{bad}:"), message
    assert "YAML syntax error: mapping values are not allowed here" in message


def test_an_invalid_document_is_named_with_its_field(tmp_path: Path) -> None:
    second = yaml.safe_load(renamed(RUN, "second"))
    second["spec"]["load"]["concurrency"] = -3
    path = write(tmp_path, f"{RUN}---\n{yaml.safe_dump(second)}")
    with pytest.raises(ManifestError) as info:
        load_manifests(path)
    message = str(info.value)
    assert message.startswith(f"{path}: document 2 of 2 (BenchmarkRun second): invalid manifest:")
    assert "spec.load.concurrency" in message and "(got -3)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no resource in the file"),
        ("---\n---\n", "no resource in the file"),
        ("- a\n- b\n", "expected a BenchmarkRun or Experiment manifest (a mapping)"),
        ("kind: Pod\n", "kind should be 'BenchmarkRun' or 'Experiment'"),
        (f"{RUN}---\n{RUN}", "document 2 of 2 (BenchmarkRun mock-c8): a second resource named"),
    ],
)
def test_refused_files(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifests(path)
    assert str(info.value).startswith(str(path)) and expected in str(info.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"cannot read .*nope\.yaml: No such file"):
        load_manifests(tmp_path / "nope.yaml")


def test_an_unclosed_bracket_names_where_it_was_opened(tmp_path: Path) -> None:
    path = write(tmp_path, "kind: BenchmarkRun\nspec:\n  load: {concurrency: 1\n")
    with pytest.raises(ManifestError) as info:
        load_manifests(path)
    assert str(info.value) == (
        f"{path}:4:1: YAML syntax error: expected ',' or '}}', but got '<stream end>' "
        "(while parsing a flow mapping that started at 3:9)"
    )
