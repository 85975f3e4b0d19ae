"""The `flexserve` command line: one entry point for building, serving, measuring and load-testing.

Each command lives with its help section in `flexserve/commands/` and imports its own code when it
runs, so `flexserve simulate` never loads torch and `flexserve --help` starts in a fraction of a
second. Errors a user can fix (a missing repository, a bad option value) end with one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from contract.manifest import ManifestError
from flexserve import __version__
from flexserve.commands import GROUPS, Formatter, build, loadtest, measure, serve
from serving.errors import FlexServeError

COMMANDS = (
    build.add_train,
    build.add_distill_search,
    build.add_report,
    build.add_import,
    serve.add_serve,
    serve.add_bento,
    serve.add_triton,
    measure.add_profile,
    measure.add_simulate,
    measure.add_bench_policy,
    measure.add_server_benches,
    measure.add_bench_routing,
    measure.add_bench_scale,
    measure.add_bench_byom,
    measure.add_bench_coldstart,
    measure.add_bench_federated,
    loadtest.add_loadtest,
)


def build_parser() -> argparse.ArgumentParser:
    GROUPS.clear()
    parser = argparse.ArgumentParser(
        prog="flexserve", usage="flexserve [-h] [--version] COMMAND ...", formatter_class=Formatter
    )
    parser.add_argument("--version", action="version", version=f"flexserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS)
    for add in COMMANDS:
        add(commands)
    width = max(len(name) for entries in GROUPS.values() for name, _ in entries) + 2
    listing = "\n".join(
        f"{group}:\n" + "\n".join(f"  {name:<{width}}{summary}" for name, summary in entries) + "\n"
        for group, entries in GROUPS.items()
    )
    parser.description = (
        "FlexServe: train model variants, and serve each request with the most accurate one that "
        f"fits its latency budget.\n\n{listing}"
    )
    parser.epilog = "`flexserve COMMAND --help` shows a command's options, their defaults and an example."
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, FlexServeError, ManifestError) as error:
        print(f"flexserve {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
