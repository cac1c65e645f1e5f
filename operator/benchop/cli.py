"""The one console script: ``benchop <command>``.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; a module is imported only when its command runs, so
``benchop --help`` stays fast and a missing optional dependency of one command
never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from benchop import __version__

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("benchop.local.command", "run BenchmarkRuns and Experiments locally, no cluster"),
    "operator": ("benchop.operator.command", "run the Kubernetes operator (kopf)"),
    "agent": ("benchagent.command", "run the per-node GPU agent (sampler, exporter, baselines)"),
    "loadgen": ("benchop.loadgen.command", "run one load-generator worker (what a Job runs)"),
    "mock-server": ("benchop.mockserver", "serve a mock OpenAI-compatible model server"),
    "get": ("benchop.get", "show results of runs and experiments from the cluster"),
    "top": ("benchop.top", "live GPU table of a run, from Prometheus"),
    "results": ("benchop.results", "print or save a run's or experiment's results bundle"),
    "report": ("benchop.htmlreport", "one self-contained HTML report of results (or two)"),
    "collect": ("benchop.collect", "merge the workers' files on a PVC into the bundle (a Job)"),
}


def build_parser(
    command: str | None,
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The top-level parser, and the subparser of ``command`` (with its arguments) if known."""
    parser = argparse.ArgumentParser(
        prog="benchop",
        description="Benchmark LLM inference servers on GPU clusters.",
    )
    parser.add_argument("--version", action="version", version=f"benchop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            importlib.import_module(module).add_arguments(p)
            chosen = p
    sub.add_parser("version", help="print the version")
    return parser, chosen


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in COMMANDS else None
    parser, subparser = build_parser(command)
    args, unknown = parser.parse_known_args(args_list)
    if unknown:
        # argparse would report them with the top-level usage; the command's usage is the
        # one that helps (`benchop run: error: unrecognized arguments: --bogus`)
        (subparser or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "version":
        print(f"benchop {__version__}")
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
