"""Second-opinion review of the morning's changes (d5aa2c58..de4c1876): what they left wrong.

``read_json_object`` (shared/argtypes.py) refused ``1e400`` saying "1e400 is no JSON number", which is
false (it is JSON; no float holds it), and an integer longer than Python converts (4,300 digits)
escaped as Python's own ValueError, without the option's label, where every other refusal names it.
The generator server kept its own copy of that strict reading, with the same gaps; both now read
through ``shared.argtypes.loads_json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.generator.server import _row_request
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


@pytest.mark.parametrize("digits", [400, 5000], ids=["past_a_float", "past_pythons_conversion"])
def test_the_generator_server_refuses_an_integer_no_float_holds_in_parameters_as_not_json(
    digits: int,
) -> None:
    """The server read ``parameters`` with its own copy of the strict JSON reading: an integer past a
    float's range was taken (and echoed into ``parameters_used``, where 1e400 was refused), and one past
    4,300 digits refused in Python's words ("Exceeds the limit ... sys.set_int_max_str_digits()"), not
    as "parameters are not JSON". It now reads them as ``read_json_object`` does."""
    number = "9" * digits
    request = {"parameters": np.array([[f'{{"note": {number}}}'.encode()]], dtype=object)}
    with pytest.raises(ValueError) as refused:
        _row_request(request, 0, 64)
    assert str(refused.value) == f"parameters are not JSON: {number[:20]}... is too large for a number"


@pytest.mark.parametrize(
    ("constant", "said"),
    [
        ("NaN", "NaN is no JSON number"),
        ("-Infinity", "-Infinity is no JSON number"),
        ("1e400", "1e400 is too large for a number"),
    ],
)
def test_the_generator_server_still_names_a_number_json_has_not(constant: str, said: str) -> None:
    request = {"parameters": np.array([[f'{{"note": {constant}}}'.encode()]], dtype=object)}
    with pytest.raises(ValueError) as refused:
        _row_request(request, 0, 64)
    assert str(refused.value) == f"parameters are not JSON: {said}"
