"""``skuforge --help`` and the commands' own help agree: a command's line in the top-level list that
names some of its subcommands names all of them, so a subcommand added later is not left out; and
every help reads as text, without the docstring markup of the module it came from; and every option
that holds a default says it."""

from __future__ import annotations

import argparse
import re

import pytest

from skuforge_cli.main import COMMANDS
from skuforge_cli.main import main as skuforge_main
from tests.support.docs import command_parsers, silent_defaults


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``skuforge ARGV --help`` prints."""
    with pytest.raises(SystemExit):
        skuforge_main([*argv, "--help"])
    return capsys.readouterr().out


def _subcommands(command: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The subcommands ``skuforge COMMAND --help`` lists in its usage line (``{a,b} ...``)."""
    usage = _help([command], capsys).split("\n\n", 1)[0]
    found = re.search(r"\{([a-z,-]+)\}\s+\.\.\.", usage)
    return found.group(1).split(",") if found else []


def unnamed_subcommands(summary: str, subcommands: list[str]) -> list[str]:
    """The subcommands ``summary`` leaves out, when it names any ("pairs" inside "real-pairs" is not
    "pairs")."""
    named = [name for name in subcommands if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", summary)]
    return [name for name in subcommands if name not in named] if named else []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_commands_summary_names_all_its_subcommands_or_none(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = COMMANDS[command][1]
    missing = unnamed_subcommands(summary, _subcommands(command, capsys))
    assert not missing, f"`skuforge --help` says of {command} {summary!r}, leaving out {missing}"


def test_a_summary_naming_some_subcommands_is_caught() -> None:
    assert unnamed_subcommands("make (real-pairs, train)", ["train", "pairs", "real-pairs"]) == ["pairs"]
    assert unnamed_subcommands("plot its panels", ["json", "render"]) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_commands_help_has_no_docstring_markup(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A module docstring given as a parser's description printed ``skuforge matting ...`` with its
    reStructuredText quotes."""
    shown = {command: _help([command], capsys)}
    shown |= {f"{command} {sub}": _help([command, sub], capsys) for sub in _subcommands(command, capsys)}
    marked = [name for name, text in shown.items() if "``" in text]
    assert not marked, f"the help of {marked} prints docstring markup (``)"


def _flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


@pytest.mark.parametrize("action", ["start", "stop"])
def test_kafka_timeouts_say_the_default_the_parser_holds(
    action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kafka start --timeout`` and ``kafka stop --timeout`` waited 90 s and 30 s and said neither."""
    from devstack.broker import _parser

    sub = next(a for a in _parser("skuforge kafka")._actions if isinstance(a, argparse._SubParsersAction))
    timeout = next(a for a in sub.choices[action]._actions if "--timeout" in a.option_strings)
    assert f"(default {timeout.default:g})" in _flat(_help(["kafka", action], capsys))


def test_kafka_status_says_its_exit_status_when_no_broker_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert "3 no broker is running" in _flat(_help(["kafka", "status"], capsys))


def test_up_scrape_interval_says_its_range(capsys: pytest.CaptureFixture[str]) -> None:
    from devstack.up import MAX_SCRAPE_INTERVAL_S, MIN_SCRAPE_INTERVAL_S

    assert f"{MIN_SCRAPE_INTERVAL_S:g} to {MAX_SCRAPE_INTERVAL_S:g}" in _flat(_help(["up"], capsys))


def _commands() -> list[list[str]]:
    """Each command's argv; ``serve``'s, which dispatches, by server."""
    return [["serve", "console"], ["serve", "generator"]] + [
        [name] for name in sorted(COMMANDS) if name != "serve"
    ]


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_every_options_help_states_its_default(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    silent = [
        name for prog, parser in command_parsers(argv, monkeypatch) for name in silent_defaults(prog, parser)
    ]
    assert not silent, f"these options' help does not say their default: {silent}"


def test_an_option_whose_help_leaves_out_its_default_is_caught() -> None:
    parser = argparse.ArgumentParser(prog="skuforge matting train")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--init", default=None, help="start from these weights")
    parser.add_argument("--extra", action="append", default=[], help="repeatable")
    assert silent_defaults(parser.prog, parser) == ["skuforge matting train --steps (default 2000)"]


def test_demo_says_the_ranges_of_the_synthetic_options_synth_says(capsys: pytest.CaptureFixture[str]) -> None:
    """``skuforge demo --synthetic --size 5000`` is refused as ``synth`` refuses it, and demo's help
    gave neither its --size nor its --seed range, which synth's help gives."""
    from shared.synth.photo import MIN_SIZE
    from skuforge_cli.synth import MAX_SIZE

    demo = _flat(_help(["demo"], capsys))
    assert f"px, {MIN_SIZE} to {MAX_SIZE} (default" in demo
    assert "catalogue seed, 0 to 2^63-1 (default" in demo
