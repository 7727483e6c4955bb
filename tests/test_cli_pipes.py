"""A command piped into a reader that stops early (``skuforge flow | head -1``) stops quietly: no
BrokenPipeError traceback, exit 1, as ``skuforge dataset stats`` and ``sweep`` already did. Every other
command that prints ended in a traceback of our code once the reader had gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import skuforge_into_closed_pipe

# Commands that print without a broker or a store (topics list prints this environment's names).
PRINTING = [
    ["flow"],
    ["flow", "--json"],
    ["config"],
    ["config", "--markdown"],
    ["prometheus", "metrics"],
    ["dashboard", "json"],
    ["topics", "list"],
]


@pytest.mark.parametrize("argv", PRINTING, ids=[" ".join(argv) for argv in PRINTING])
def test_a_command_into_a_closed_pipe_stops_quietly(argv: list[str]) -> None:
    done = skuforge_into_closed_pipe(*argv)
    assert done.stderr == ""
    assert done.returncode == 1


def test_synth_into_a_closed_pipe_stops_quietly_with_its_photos_written(tmp_path: Path) -> None:
    """Its one line comes after the photos: they are written whether or not anyone reads it."""
    out = tmp_path / "synth"
    done = skuforge_into_closed_pipe(
        "synth", "--out", str(out), "--skus", "1", "--photos-per-sku", "1", "--seed", "1", "--size", "64"
    )
    assert done.stderr == ""
    assert done.returncode == 1
    assert (out / "truth.jsonl").is_file()


def test_a_broken_pipe_that_is_not_stdouts_is_not_taken_for_its_reader_gone() -> None:
    """A pipe to a child (a tool the command runs) that breaks is a failure to show, not a reader of
    stdout that stopped early: it is not swallowed as one."""
    from shared.commands import run_command

    def command() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        run_command("skuforge planted", command)
