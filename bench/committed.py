"""The committed figures of a bench (``bench/results/<name>.json``, which the docs cite), kept from the
runs that are not the committed run."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from shared.argtypes import file_problem


def check_out(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    committed: Path,
    *,
    not_in_figures: Iterable[str] = (),
) -> None:
    """Refuse (``parser.error``, exit 2), before any round, ``--out`` at ``committed`` from a run with
    an option other than its default (a smoke run's figures went over the committed run's), and an
    ``--out`` no file can be written at (found in a traceback after the whole run). Options named in
    ``not_in_figures`` (a folder for logs) do not change the figures."""
    ignored = {"out", *not_in_figures}
    changed = [
        "--" + name.replace("_", "-")
        for name, value in vars(args).items()
        if name not in ignored and value != parser.get_default(name)
    ]
    if changed and args.out.resolve() == committed.resolve():
        parser.error(
            f"{', '.join(changed)}: not the committed run: give --out, so that its figures do not replace "
            f"the committed bench/results/{committed.name}"
        )
    if problem := file_problem(args.out, committed.name):
        parser.error(f"--out {args.out}: {problem}")
