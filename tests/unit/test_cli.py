"""The console script's conventions, checked over every command: ``-o`` is a format, files are
``--output-file``, and an unknown flag is reported with the command's own usage."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from benchop.cli import COMMANDS, main

FORMATS = {"table", "yaml", "json", "wide", "csv"}  # csv: benchop results (timeseries.csv)


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"benchop {name}")
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    return parser


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_dash_o_is_an_output_format_in_every_command(name: str) -> None:
    for action in command_parser(name)._actions:
        flags = set(action.option_strings)
        if "-o" in flags or "--output" in flags:
            assert {"-o", "--output"} <= flags, (name, flags)
            assert action.choices is not None and set(action.choices) <= FORMATS, (name, action)
        if any("file" in f for f in flags if f.startswith("--output")):
            assert flags == {"--output-file"} and action.type is Path, (name, flags)


def test_run_writes_files_only_with_output_file() -> None:
    parser = command_parser("run")
    args = parser.parse_args(["x.yaml", "-o", "yaml", "--output-file", "out/status.yaml"])
    assert args.output == "yaml" and args.output_file == Path("out/status.yaml")
    with pytest.raises(SystemExit):  # the old meaning of -o (a path) is gone, no alias
        parser.parse_args(["x.yaml", "-o", "status.yaml"])


@pytest.mark.parametrize(
    ("argv", "unknown"),
    [
        (["run", "examples/run.yaml", "--bogus"], "--bogus"),
        (["get", "runs", "--bogus", "1"], "--bogus 1"),
        (["top", "--nope"], "--nope"),
    ],
)
def test_unknown_flags_show_the_commands_usage(
    argv: list[str], unknown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: benchop {argv[0]} "), err
    assert f"benchop {argv[0]}: error: unrecognized arguments: {unknown}" in err


def test_an_unknown_command_shows_the_top_level_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["runn", "x.yaml"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: benchop [-h]") and "invalid choice: 'runn'" in err
