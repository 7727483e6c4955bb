"""A folder of training pairs that a run stopped in before its set was whole.

``skuforge matting pairs`` and ``real-pairs`` write their pairs one at a time, each whole or not at
all. A run that stops (Ctrl-C, a crash, a full disk) leaves part of its set, which ``train --extra``
read as the whole set without a word. So each run writes its marker (``.COMMAND-unfinished.json``,
holding the run's options) before its first pair and removes it once the set is whole: training
refuses a folder holding one, naming the rerun that finishes it. Hidden, so that neither
``load_pairs`` nor a checkpoint's fingerprint of the folder counts it. Folders without a marker
(made by hand, or before markers) are read as before.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from shared.model_cache import write_atomically

__all__ = [
    "COMPOSITE_PAIRS",
    "REAL_PAIRS",
    "PairsCommand",
    "mark_finished",
    "mark_unfinished",
    "resumed_run",
    "unfinished_problem",
    "unfinished_run",
]


@dataclass(frozen=True)
class PairsCommand:
    """A ``skuforge matting`` command that writes a set of pairs, and how to name its rerun."""

    name: str
    # The marker's options the command takes, in the order its rerun names them; True/False: a flag.
    rerun_options: tuple[str, ...]
    # What else the rerun needs that the marker does not hold.
    rerun_note: str = ""

    @property
    def marker(self) -> str:
        return f".{self.name}-unfinished.json"

    def rerun(self, options: dict[str, object], folder: Path) -> str:
        """The command line that runs ``options`` again into ``folder``."""
        words = ["skuforge", "matting", self.name]
        for key in self.rerun_options:
            option, value = f"--{key.replace('_', '-')}", options.get(key)
            if isinstance(value, bool):
                words.extend([option] if value else [])
            elif key in options:
                words.extend([option, shlex.quote(str(value))])
        return " ".join([*words, "--out", shlex.quote(str(folder))])


REAL_PAIRS = PairsCommand(
    "real-pairs",
    ("dataset", "instore", "composites", "seed", "reflection_share"),
    rerun_note=" (and the --held-out it was given)",
)
COMPOSITE_PAIRS = PairsCommand("pairs", ("n", "catalogue_seed", "roi"))
COMMANDS = (REAL_PAIRS, COMPOSITE_PAIRS)


def unfinished_run(folder: Path, command: PairsCommand) -> dict[str, object] | None:
    """The options of the ``command`` run that stopped before finishing ``folder``; None when no run
    did (a finished run's folder, or one made by hand)."""
    marker = folder / command.marker
    if not marker.is_file():
        return None
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):  # written atomically: only a hand edit; unfinished all the same
        return {}
    return recorded if isinstance(recorded, dict) else {}


def resumed_run(
    folder: Path, command: PairsCommand, options: dict[str, object], *, any_value: Collection[str] = ()
) -> dict[str, object] | None:
    """The options of the ``command`` run that stopped in ``folder`` (None if none did), which a run
    with ``options`` finishes; ``ValueError`` when they differ (but in ``any_value``), as the two runs'
    pairs would be mixed, and when another command's run stopped there (its rerun removes the pairs it
    does not make). Checked before anything is written."""
    for other in COMMANDS:
        if other != command and unfinished_run(folder, other) is not None:
            raise ValueError(
                f"{folder}: a `skuforge matting {other.name}` run stopped before it finished this folder "
                f"({other.marker}); finish it there, or give another folder"
            )
    recorded = unfinished_run(folder, command)
    if recorded is None:
        return None
    options = json.loads(json.dumps(options))  # as the marker holds them: tuples as lists
    differ = ", ".join(
        f"{key.replace('_', ' ')} {recorded.get(key)}, not {options.get(key)}"
        for key in sorted(recorded.keys() | options.keys())
        if key not in any_value and recorded.get(key) != options.get(key)
    )
    if differ:
        raise ValueError(
            f"{folder}: a run with other options stopped before it finished this folder ({differ}); rerun "
            "with its options to finish it, or give another folder"
        )
    return recorded


def mark_unfinished(folder: Path, command: PairsCommand, options: dict[str, object]) -> None:
    """Before a run's first pair: ``folder`` holds part of a set until ``mark_finished``."""
    write_atomically(folder / command.marker, (json.dumps(options, indent=2) + "\n").encode())


def mark_finished(folder: Path, command: PairsCommand) -> None:
    """After a run's last pair (and anything it writes to say so): the set is whole."""
    (folder / command.marker).unlink(missing_ok=True)


def unfinished_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a whole set of pairs to train on and how to finish it, in a line; None when
    no run stopped in it."""
    for command in COMMANDS:
        options = unfinished_run(folder, command)
        if options is not None:
            rerun = command.rerun(options, folder)
            return (
                f"a `skuforge matting {command.name}` run stopped before it finished here "
                f"({command.marker}), so it holds part of the set: finish it with `{rerun}`"
                f"{command.rerun_note}, or train on another folder"
            )
    return None
