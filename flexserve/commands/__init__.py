"""What every `flexserve` command shares: its help section, its parser (defaults shown, an example
below the options), and the `--repo` option."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from contract.manifest import DEFAULT_REPOSITORY

GROUPS: dict[str, list[tuple[str, str]]] = {}  # help section -> [(command, one line)], in order


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows every option's default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS
        if "%(default)" not in help_text and action.option_strings and not hidden:
            if not isinstance(default, (list, tuple)) or default:
                help_text += " (default: %(default)s)"
        return help_text


def command(commands, group: str, name: str, summary: str, example: str, run: Callable) -> argparse.ArgumentParser:
    GROUPS.setdefault(group, []).append((name, summary))
    parser = commands.add_parser(
        name, prog=f"flexserve {name}", description=summary, epilog=f"example:\n  {example}", formatter_class=Formatter
    )
    parser.set_defaults(func=run)
    return parser


def repo_option(parser: argparse.ArgumentParser, help_text: str = "the FlexServe model repository") -> None:
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPOSITORY, help=help_text)
