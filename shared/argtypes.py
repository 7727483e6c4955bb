"""argparse types the commands share (numbers within their bounds, refused naming the value given),
and the checks of a folder or file argument.

A float must also be finite: ``inf`` and ``nan`` parse as floats, and an ``--l2 inf`` or a
``--timeout-s nan`` would otherwise run and mean nothing. Either is written in ASCII digits: int() and
float() read the digits of every script, and ``--replicas matting=٣`` ran three members of what reads as
no number at all.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

# The most threads a command or a service setting may ask of ONNX Runtime or torch (the services' settings and
# the commands' --threads): torch.set_num_threads(100000) ends in a segfault; ONNX Runtime took it as asked.
MAX_THREADS = 256


def whole_number(text: str) -> int:
    """``text`` as a whole number, written in ASCII digits (a sign may lead)."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise argparse.ArgumentTypeError(f"must be a whole number in ASCII digits, got {text!r}")
    return int(text)


def ascii_float(text: str) -> float:
    """``text`` as float() reads it, written in ASCII (``2.5``, ``1e-3``, ``inf``); a negative zero
    (``-0``, or ``-1e-400``, which float() rounds to one) is 0: kept as -0.0, it passed every "0 or
    more" bound and was written "-0.0" into results JSON and "-0" in messages."""
    if not text.isascii():
        raise argparse.ArgumentTypeError(f"must be a number in ASCII digits, got {text!r}")
    return float(text) + 0.0  # -0.0 + 0.0 is 0.0; every other value, NaN included, is unchanged


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of 0 or more."""
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def int_between(low: int, high: int) -> Callable[[str], int]:
    """A type for a whole number from ``low`` to ``high`` (a seed a generator can take, a port, an
    image side a backbone can run at)."""

    def parse(text: str) -> int:
        value = whole_number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    parse.__name__ = f"integer from {low} to {high}"  # argparse names the type in its errors
    return parse


def float_between(low: float, high: float) -> Callable[[str], float]:
    """A type for a finite number from ``low`` to ``high``."""

    def parse(text: str) -> float:
        value = ascii_float(text)
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a number from {low:g} to {high:g}, got {text}")
        return value

    parse.__name__ = f"number from {low:g} to {high:g}"
    return parse


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = ascii_float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more."""
    value = ascii_float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text}")
    return value


def invalid_choice(text: str, choices: list[str]) -> str:
    """The refusal of ``text`` as none of ``choices``: them all, and the closest one when ``text`` is near
    enough to be a slip (``topic``: did you mean 'topics'?)."""
    listed = ", ".join(repr(choice) for choice in choices)
    close = difflib.get_close_matches(text, choices, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    return f"invalid choice: {text!r} (choose from {listed}){guess}"


def one_of(choices: list[str]) -> Callable[[str], str]:
    """A type for one name of ``choices`` (a command, a stage): another is refused with them all, and
    the closest one when a name is near enough to be a slip (``topic``: did you mean 'topics'?).

    Give ``choices`` to the argument too, for its usage line."""

    def parse(text: str) -> str:
        if text in choices:
            return text
        raise argparse.ArgumentTypeError(invalid_choice(text, choices))

    parse.__name__ = "choice"
    return parse


def path_argument(kind: str) -> Callable[[str], Path]:
    """A type for the path of a ``kind`` ("folder", "file"); an empty one is refused: Path("") is the
    current folder, so an unset shell variable (`skuforge evaluate --out "$EVAL"`) read, wrote or
    named every file of wherever the user stood."""

    def parse(text: str) -> Path:
        if not text:
            raise argparse.ArgumentTypeError(f"the path is empty (an unset shell variable?); give a {kind}")
        return Path(text)

    parse.__name__ = "path"
    return parse


def model_location(text: str) -> str:
    """A type for a model's file path or s3:// URI; an empty one is refused, as ``path_argument`` refuses
    it: ``--model "$MODEL"`` with MODEL unset was looked for in the current folder ("no matting model
    file at .")."""
    if not text:
        raise argparse.ArgumentTypeError("the path is empty (an unset shell variable?); give a model file")
    return text


def contract_text(rule: Any) -> Callable[[str], str]:
    """A type for an option whose text goes into an event's field, ``rule`` that field's type
    (``schemas.events.AdapterSeries``): refused as the contract refuses it, naming the character and not
    echoing it. ``skuforge adapters register --series`` stored a newline or a U+202E as typed, which the
    event then refused (or a reader read escaped)."""
    # schemas (pydantic) here, not at the top: a bench worker imports this module and is measured without
    # it (tests/test_bench_review45b.py).
    from schemas.common import text_check

    check = text_check(rule)

    def parse(text: str) -> str:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "text"
    return parse


def uri_argument(unset: str, give: str) -> Callable[[str], str]:
    """A type for an object store's URI an option names; an empty one (or blanks) is refused as it is
    parsed, as ``path_argument`` refuses an empty path, saying which variable ``unset`` was probably
    meant and what to ``give``: ``skuforge evaluate --scenes "$SKUFORGE_SCENES_URI"`` with it unset was
    refused only after the backbone loaded and the photos were read."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"the URI is empty (is {unset} set?); give {give}")
        return text

    parse.__name__ = "URI"
    return parse


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands (``kafka statsu``: did you mean 'status'?), and any other
    argument with string ``choices``, are refused as ``one_of`` refuses a name. Its subparsers are
    CommandParsers too.

    The check has to be argparse's own: it tests a subcommand's name against the choices before the
    subparsers action is called, and ``one_of`` as the subparsers' type would be applied to the words
    after the name as well (``kafka status --data-dir X`` refused ``--data-dir``). Python 3.14's
    ``suggest_on_error`` does the same."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if (
            isinstance(value, str)
            and choices is not None
            and value not in choices
            and all(isinstance(choice, str) for choice in choices)
        ):
            raise argparse.ArgumentError(action, invalid_choice(value, list(choices)))
        super()._check_value(action, value)


def folder_problem(path: Path, *, writable: bool = True) -> str | None:
    """Why ``path`` cannot be (or become) a folder: a file in its place or above it, a folder above it
    that cannot be searched, or (``writable``) a folder that cannot be made or written in; None if it
    can. Checked before a command's long run, not found in a traceback after it.

    Writability is tried, not inferred from permission bits (``os.access`` says yes to root for
    ``/proc/x``, or on a read-only mount): the missing folders are made, a file is created in
    ``path`` and removed, and the folders made for the check are removed again, so a check, passed
    or failed, leaves nothing behind; the command makes the folder when it writes there."""
    try:
        existing = next((candidate for candidate in (path, *path.parents) if candidate.exists()), None)
    except OSError as exc:  # a folder above it this user may not look into
        return f"cannot reach it ({exc.strerror or exc})"
    if existing is None:
        return None
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not writable:
        return None
    return _write_problem(path, existing)


class NotJsonNumber(ValueError):
    """A number JSON has not (NaN, Infinity), or one no float holds (1e400); what is wrong is the message."""


def _no_json_number(constant: str) -> NoReturn:
    # Python's json reads NaN and Infinity, which JSON has not: a figure that is NaN compares as no
    # number does (neither above nor below a threshold), and was taken.
    raise NotJsonNumber(f"{constant} is no JSON number")


def _finite_number(number: str) -> float:
    # 1e400 is JSON, but no float holds it: Python reads it as infinity.
    value = float(number)
    if not math.isfinite(value):
        raise NotJsonNumber(f"{number} is too large for a number")
    return value


def _float_sized_integer(number: str) -> int:
    # An integer past a float's range (or past the 4,300 digits Python converts, whose ValueError named
    # no file) is as unusable as 1e400 where a figure is compared or averaged as a float.
    try:
        value = int(number)
        float(value)
    except (ValueError, OverflowError):
        raise NotJsonNumber(
            f"{number[:20]}{'...' if len(number) > 20 else ''} is too large for a number"
        ) from None
    return value


def loads_json(text: str) -> Any:
    """``text`` read by JSON's rules, where Python's json is looser: ``NotJsonNumber`` for NaN, Infinity
    and a number no float holds (1e400, an integer of 400 digits), naming it; else as ``json.loads``
    (``json.JSONDecodeError``, ``RecursionError`` for nesting deeper than Python's stack)."""
    return json.loads(
        text, parse_constant=_no_json_number, parse_float=_finite_number, parse_int=_float_sized_integer
    )


def read_json_object(path: Path, *, label: str, missing: str, kind: str = "a JSON object") -> dict[str, Any]:
    """The JSON object in the file an argument names; ``ValueError`` says why it cannot be read, each
    message starting ``label`` (the argument as the user gave it) and a missing file's ending ``missing``
    (what makes the file). Read by JSON's rules: NaN and Infinity are refused, and so is a number no float
    holds (1e400, an integer of 400 digits)."""
    try:
        document = loads_json(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{label}: no such file ({missing})") from None
    except NotJsonNumber as exc:
        raise ValueError(f"{label}: not a readable JSON file ({exc})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{label}: not a readable JSON file ({exc})") from None
    except RecursionError:  # json.loads' own refusal of nesting deeper than Python's stack: a traceback
        raise ValueError(f"{label}: not a readable JSON file (nested deeper than Python reads)") from None
    if not isinstance(document, dict):
        raise ValueError(f"{label}: expected {kind}, got {type(document).__name__}")
    return document


class NonFiniteFigure(ValueError):
    """A results file would hold a number JSON has not (NaN, an infinity); the message names the figure."""


def _not_json_number_at(value: object, where: str) -> tuple[str, float] | None:
    """The place (``per_sku.Kiwi.gain``, ``curve.A[1]``, ``a key of per_sku``) and value of the first
    NaN or infinity in ``value``, a dict's keys included; None when it holds none."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, value
    if isinstance(value, dict):
        # json.dumps(allow_nan=False) refuses a float key JSON has not as it refuses such a value.
        for key in value:
            if isinstance(key, float) and not math.isfinite(key):
                return f"a key of {where or 'the document'}", key
        children: Iterable[tuple[str, object]] = (
            (f"{where}.{key}" if where else str(key), child) for key, child in value.items()
        )
    elif isinstance(value, list | tuple):
        children = ((f"{where}[{index}]", child) for index, child in enumerate(value))
    else:
        return None
    for place, child in children:
        found = _not_json_number_at(child, place)
        if found is not None:
            return found
    return None


def json_file_text(document: object, *, label: str, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``document`` as the text of a JSON file (a results file), a newline at its end: what
    ``read_json_object`` reads back. ``NonFiniteFigure`` when a figure is NaN or infinite, naming it
    (``label: per_sku.Kiwi.gain is nan, which JSON has not``), so nothing is written: Python's json
    wrote it bare, a file that no JSON reader, ``read_json_object`` included, takes."""
    try:
        return json.dumps(document, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    except ValueError:
        found = _not_json_number_at(document, "")
        if found is None:
            raise
        where, value = found
        raise NonFiniteFigure(
            f"{label}: {where or 'the document'} is {value}, which JSON has not, so it was not written"
        ) from None


def file_problem(path: Path, example: str) -> str | None:
    """Why a file cannot be written at ``path``: a folder there (``example`` names a file to suggest in
    it), a file above it, a folder above it that cannot be reached, made or written in, or a name longer
    than the file system takes; None if it can. Read as ``f"{option} {path}: {problem}"``."""
    try:
        is_folder = path.is_dir()
    except OSError as exc:  # a name too long, a folder above it this user may not look into: not False
        return f"cannot reach it ({exc.strerror or exc})"
    if is_folder:
        return f"is a folder; name the file to write, e.g. {path / example}"
    problem = folder_problem(path.parent)
    if problem is None:
        # The folders are tried; the file's own name is not (nothing is written there before the run).
        size, most = len(os.fsencode(path.name)), _longest_name(path.parent)
        if size > most:
            return f"its name is {size} bytes long; the file system takes at most {most}"
    return problem


def _longest_name(folder: Path) -> int:
    """The longest file name, in bytes, that the file system under ``folder`` (or the nearest folder
    above it that exists) takes; 255, Linux's and macOS's, where it does not say."""
    for candidate in (folder, *folder.parents):
        with contextlib.suppress(OSError, ValueError):
            if candidate.is_dir():
                return os.pathconf(candidate, "PC_NAME_MAX")
    return 255


def _write_problem(path: Path, existing: Path) -> str | None:
    """Try making ``path`` under its nearest existing folder ``existing`` and a file in it; undo both."""
    chain = [path, *path.parents]
    to_make = list(reversed(chain[: chain.index(existing)]))  # outermost first; empty if path exists
    made: list[Path] = []
    where = existing
    try:
        for folder in to_make:
            where = folder.parent
            folder.mkdir()
            made.append(folder)
        where = path
        handle, probe = tempfile.mkstemp(prefix=".skuforge-write-check-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write in {where} ({exc.strerror or exc})"
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # something else wrote there meanwhile: keep it
                folder.rmdir()
    return None
