"""What the docs tests share: the docs (``DOCS``, ``README``), README's settings table
(``settings_table_in``), and the check that a command a doc shows parses with the real command-line
parsers (``check_parses``, on the ``doc_argv`` of the command ``after_prefix`` leaves); a command's
parsers, its subcommands' included (``command_parsers``)."""

from __future__ import annotations

import argparse
import itertools
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from skuforge_cli.main import main as skuforge_main

ROOT = Path(__file__).resolve().parents[2]


# README, docs/ and the READMEs beside the files they explain (Triton's, the samples', the bench data's).
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "deploy").glob("*/README.md")),
    *sorted((ROOT / "samples").glob("*/README.md")),
    *sorted((ROOT / "bench" / "data").glob("*/README.md")),
]


# Placeholders the docs write for a value, and a value of that kind the parsers accept.
PLACEHOLDERS = {
    "STAGE": "captioner",
    "<stage>": "captioner",
    "NAME": "console",
    "TOPIC": "sku.ingested.v1",
    "<topic>": "sku.ingested.v1",
    "DIR": "some/dir",
    "FILE": "some/file.json",
    "OUT": "out",
    "R": "object_missing",
    "X": "0",
    "WHAT": "a-try",
}


COMMAND_PREFIXES = (".venv/bin/skuforge ", "skuforge ", ".venv/bin/python -m skuforge_cli ")


REAL_PARSE_ARGS = argparse.ArgumentParser.parse_args


class _Parsed(Exception):
    """Raised instead of running a command once its own parser is found."""

    def __init__(self, parser: argparse.ArgumentParser, argv: list[str]) -> None:
        super().__init__(parser.prog)
        self.parser = parser
        self.argv = argv


def after_prefix(command: str) -> str:
    for prefix in COMMAND_PREFIXES:
        if command.startswith(prefix):
            return command[len(prefix) :]
    raise AssertionError(command)


def doc_argv(command: str) -> list[str]:
    """The doc's command as argv: optional groups opened, placeholders filled, the first of
    alternatives (``stats|export|compact``) taken, ``--help`` dropped."""
    argv = []
    for token in shlex.split(command.replace("\\|", "|").replace("[", " ").replace("]", " ")):
        token = PLACEHOLDERS.get(token, token)
        if "|" in token:
            token = token.split("|")[0]
        if token != "--help":  # every parser has it; asking for it would print and exit
            argv.append(PLACEHOLDERS.get(token, token))
    return argv


def _find_parser(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, entry: Callable[[list[str]], object] = skuforge_main
) -> _Parsed:
    """Dispatch ``skuforge argv`` (or ``entry(argv)``) up to the parser of the command it names (the
    dispatchers, ``skuforge`` and ``skuforge serve``, parse for real; the first other parser stops it)."""

    def parse_args(
        self: argparse.ArgumentParser, args: list[str] | None = None, namespace: object = None
    ) -> object:
        if any(action.nargs == argparse.REMAINDER for action in self._actions):
            return REAL_PARSE_ARGS(self, args, namespace)
        raise _Parsed(self, list(args or []))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    with pytest.raises(_Parsed) as found:
        entry(argv)
    return found.value


def _leaf(parser: argparse.ArgumentParser, args: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The subcommand parser ``args`` walks down to (``matting train``), and the words it was given."""
    for position, word in enumerate(args):
        if word.startswith("-"):
            continue
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and word in action.choices:
                return _leaf(action.choices[word], args[position + 1 :])
    return parser, args


def command_parsers(
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    entry: Callable[[list[str]], object] = skuforge_main,
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(its prog, parser) of the command ``skuforge argv`` (or ``entry(argv)``) names and of each of
    its subcommands."""
    pending = [_find_parser(argv, monkeypatch, entry).parser]
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", REAL_PARSE_ARGS)
    while pending:
        parser = pending.pop(0)
        yield parser.prog, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += action.choices.values()


class _ParseError(Exception):
    """What a parser would have printed before exiting 2."""


def _raise(self: argparse.ArgumentParser, message: str) -> NoReturn:
    raise _ParseError(f"{self.prog}: {message}")


# A command quoted in prose may leave out what it needs ("`skuforge run`", "`skuforge up --replicas`").
INCOMPLETE = (
    "the following arguments are required",
    "expected one argument",
    "expected at least one argument",
)


def check_parses(
    where: str,
    shown: str,
    argv: list[str],
    whole: bool,
    monkeypatch: pytest.MonkeyPatch,
    entry: Callable[[list[str]], object] = skuforge_main,
) -> None:
    """``shown`` (the command as the doc writes it) names only options its parser has, and parses;
    a ``whole`` command must parse as given, one quoted in prose may leave out what it needs."""
    monkeypatch.setattr(argparse.ArgumentParser, "error", _raise)
    try:
        found = _find_parser(argv, monkeypatch, entry)
    except _ParseError as exc:
        pytest.fail(f"{where}: `{shown}` is not a command ({exc})")
    leaf, words = _leaf(found.parser, found.argv)
    known = set(leaf._option_string_actions)
    unknown = [
        word.split("=")[0] for word in words if word.startswith("--") and word.split("=")[0] not in known
    ]
    assert not unknown, f"{where}: `{shown}`: {leaf.prog} has no option {unknown}"
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", REAL_PARSE_ARGS)
    try:
        found.parser.parse_args(found.argv)
    except _ParseError as exc:
        if whole or not any(reason in str(exc) for reason in INCOMPLETE):
            pytest.fail(f"{where}: `{shown}` does not parse ({exc})")


README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_section(readme: str, title: str) -> str:
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def settings_table_in(readme: str) -> str:
    """README's settings table: the lines from its header to the first line that is no table row."""
    header = "| variable | default | allowed | meaning |"
    section = readme_section(readme, "Configuration")
    assert header in section, "README's Configuration section has no settings table"
    below = section.split(header, 1)[1].splitlines()[1:]
    rows = itertools.takewhile(lambda line: line.startswith("|"), below)
    return "\n".join([header, *rows])


def silent_defaults(prog: str, parser: argparse.ArgumentParser) -> list[str]:
    """The options of ``parser`` that hold a default their help does not state (``--steps`` ran 2000
    steps, ``--batch`` 8, and ``skuforge matting train --help`` said neither)."""
    return [
        f"{prog} {action.option_strings[-1]} (default {action.default!r})"
        for action in parser._actions
        if action.option_strings
        and action.default not in (None, False, [], argparse.SUPPRESS)
        and "default" not in (action.help or "")
    ]
