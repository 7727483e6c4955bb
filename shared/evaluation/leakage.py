"""The held-out photos must never reach training or the scene library: by path or by content."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class LeakageError(ValueError):
    """A held-out photo is also a training image or a scene; the message names them."""


def check_disjoint(heldout: Iterable[tuple[str, str]], **others: Iterable[tuple[str, str]]) -> None:
    """Raise ``LeakageError`` when a held-out (name, sha256) shares a path or a hash with any other set.

    Names that are local paths are compared resolved (a symlink or ``..`` does not hide a file).
    """
    held = list(heldout)
    held_paths = {_canonical(name): name for name, _ in held}
    held_hashes = {sha: name for name, sha in held}
    problems = []
    for what, items in others.items():
        for name, sha in items:
            if sha in held_hashes:
                problems.append(f"{what} {name} has the same content as held-out {held_hashes[sha]}")
            elif _canonical(name) in held_paths:
                problems.append(f"{what} {name} is the held-out file {held_paths[_canonical(name)]}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise LeakageError(f"held-out photos must not be used for training or scenes: {shown}")


def _canonical(name: str) -> str:
    if "://" in name:
        return name
    return str(Path(name).resolve())
