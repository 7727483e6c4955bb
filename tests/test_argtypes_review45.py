"""A JSON file an argument names is read by JSON's rules: NaN and Infinity are refused, naming them.

``read_json_object`` used Python's json, which reads ``NaN``, ``Infinity`` and ``-Infinity`` (and reads
``1e400`` as infinity): an evaluation or results file holding one was taken, and its figure compared
as no number compares (NaN is neither above nor below a threshold). No committed results file
(bench/results/) holds one. (``1e400``, JSON that no float holds, is refused as too large:
tests/test_review45_second.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.argtypes import read_json_object


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"top1": NaN}', "NaN"),
        ('{"top1": Infinity}', "Infinity"),
        ('{"k1": {"gain": -Infinity}}', "-Infinity"),
    ],
    ids=["nan", "infinity", "minus_infinity"],
)
def test_a_number_json_has_not_is_refused_naming_it(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "evaluation.json"
    path.write_text(text)
    with pytest.raises(ValueError) as refused:
        read_json_object(path, label="--evaluation x", missing="run skuforge evaluate")
    message = str(refused.value)
    assert (
        message.startswith("--evaluation x: not a readable JSON file (")
        and f"{named} is no JSON number" in message
    )


def test_finite_numbers_are_read_as_written(tmp_path: Path) -> None:
    path = tmp_path / "evaluation.json"
    path.write_text('{"top1": 0.875, "n": 3, "big": 1e300, "none": null}')
    document = read_json_object(path, label="--evaluation x", missing="run skuforge evaluate")
    assert document == {"top1": 0.875, "n": 3, "big": 1e300, "none": None}
