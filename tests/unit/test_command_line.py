"""The `flexserve` command line's shape: grouped help, a version, help and an example everywhere."""

import argparse
import subprocess
import sys

import pytest

from flexserve import __version__
from flexserve.cli import build_parser, main


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def all_commands() -> dict[str, argparse.ArgumentParser]:
    commands = subcommands(build_parser())
    found = dict(commands)
    for name, parser in commands.items():
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            found.pop(name)
            found.update({f"{name} {sub}": p for sub, p in subcommands(parser).items()})
    return found


def test_the_help_groups_commands_by_what_they_are_for(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    sections = ["build the model repository:", "serve:", "measure:", "load test:"]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    for command in (
        "train",
        "report",
        "serve",
        "triton",
        "profile",
        "simulate",
        "bench-policy",
        "bench-gateway",
        "bench-triton",
        "bench-routing",
        "loadtest",
    ):
        assert f"\n  {command} " in text


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"flexserve {__version__}"


def test_every_command_has_an_example_and_every_option_a_help_line():
    for name, parser in all_commands().items():
        assert parser.epilog and parser.epilog.startswith("example:\n  flexserve "), name
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"flexserve {name} {action.option_strings[0]} has no help"


def test_defaults_are_shown_in_the_help():
    text = " ".join(all_commands()["profile"].format_help().split())
    assert "(default: 30)" in text and "(default: artifacts/model_repository)" in text


def test_a_fixable_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["report", "--repo", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flexserve report: no model repository") and "flexserve train" in err and "\n" not in err


def test_serve_checks_the_repository_before_starting_anything(tmp_path, capsys):
    assert main(["serve", "--repo", str(tmp_path / "nowhere"), "--port", "1"]) == 2
    assert "flexserve serve: no model repository" in capsys.readouterr().err


def test_python_dash_m_flexserve_is_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "flexserve", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == f"flexserve {__version__}"
