"""Second-opinion review of the morning's changes (d5aa2c58..de4c1876): what they left wrong.

``read_json_object`` (shared/argtypes.py) refused ``1e400`` saying "1e400 is no JSON number", which is
false (it is JSON; no float holds it), and an integer longer than Python converts (4,300 digits)
escaped as Python's own ValueError, without the option's label, where every other refusal names it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.argtypes import read_json_object


@pytest.mark.parametrize("number", ["1e400", "-2E+999", "1" + "0" * 400])
def test_a_number_too_large_for_a_float_is_refused_as_too_large_not_as_no_json(
    tmp_path: Path, number: str
) -> None:
    path = tmp_path / "evaluation.json"
    path.write_text(f'{{"top1": {number}}}')
    with pytest.raises(ValueError) as refused:
        read_json_object(path, label="--evaluation x", missing="run skuforge evaluate")
    message = str(refused.value)
    assert message.startswith("--evaluation x: not a readable JSON file (")
    assert f"{number[:20]}" in message and "is too large for a number" in message
    assert "no JSON number" not in message


def test_an_integer_of_more_digits_than_python_reads_is_refused_naming_the_option(tmp_path: Path) -> None:
    path = tmp_path / "evaluation.json"
    path.write_text('{"n": ' + "9" * 5000 + "}")
    with pytest.raises(ValueError) as refused:
        read_json_object(path, label="--evaluation x", missing="run skuforge evaluate")
    message = str(refused.value)
    assert message.startswith("--evaluation x: not a readable JSON file (")
    assert "too large for a number" in message


def test_a_large_integer_a_float_holds_is_read_as_written(tmp_path: Path) -> None:
    path = tmp_path / "evaluation.json"
    path.write_text('{"n": 123456789012345678901234567890, "m": -7}')
    document = read_json_object(path, label="--evaluation x", missing="run skuforge evaluate")
    assert document == {"n": 123456789012345678901234567890, "m": -7}
