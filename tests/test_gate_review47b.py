"""Review 47 of the gate, second pass: a check's figures never read as none or all of the frame when
the mask covers some but not all of it, in the gate's messages and in the console's check table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from schemas.events import GateCheck
from shared.gate.checks import GateThresholds, figures, mask_checks
from tests.support.console import app_for, build_console, flagged_item, login, pending_envelope

SIZE = 400  # 160,000 pixels: one pixel is 0.000625% of the frame


def _checks(product_pixels: int) -> dict[str, GateCheck]:
    """The mask checks of a SIZE x SIZE predicted mask whose first ``product_pixels`` pixels are product."""
    predicted = np.zeros(SIZE * SIZE, dtype=np.uint8)
    predicted[:product_pixels] = 255
    reference = np.zeros((SIZE, SIZE), dtype=np.uint8)
    reference[100:300, 100:300] = 255
    _, checks = mask_checks(
        predicted_mask=predicted.reshape(SIZE, SIZE),
        expected_mask=reference,
        reference_mask=reference,
        thresholds=GateThresholds(),
    )
    return {check.code: check for check in checks}


def _percent(message: str) -> float:
    """The first figure of a "covers N% of the frame" message."""
    return float(message.split("covers ")[1].split("%")[0])


def test_a_mask_of_a_few_pixels_does_not_read_as_covering_none_of_the_frame() -> None:
    """Two pixels of product (0.00125%) far under the 0.5% threshold read "covers 0.00% of the frame
    (need >= 0.50%)": figures added digits only where value and threshold rounded alike, and a
    reviewer read an empty mask where the matting had found something."""
    near_empty = _checks(2)["mask_empty"]
    assert not near_empty.passed
    assert 0 < _percent(near_empty.message) < 0.5, near_empty.message


def test_a_mask_missing_a_few_pixels_does_not_read_as_covering_all_of_the_frame() -> None:
    """A mask short of the whole frame by a pixel (99.999375%) read "covers 100.00% of the frame
    (need <= 90.00%)", a figure it cannot reach."""
    most = _checks(SIZE * SIZE - 1)["mask_full_frame"]
    assert not most.passed
    assert 90 < _percent(most.message) < 100, most.message


@pytest.mark.parametrize("kind", ["f", "%"])
@pytest.mark.parametrize("value", [1e-5, 0.99999, 1e-30, 1 - 2**-53])
def test_a_fraction_between_none_and_all_reads_between_them(value: float, kind: str) -> None:
    """As a value or as a threshold, with the gate's digits or the console table's (3, "f")."""
    for shown in (figures(value, 0.5, 2, kind)[0], figures(0.5, value, 2, kind)[1], figures(value, 0.5)[0]):
        read = float(shown.rstrip("%")) / (100 if shown.endswith("%") else 1)
        assert 0 < read < 1, shown


def test_figures_at_none_all_or_away_from_the_bounds_keep_their_usual_digits() -> None:
    assert figures(0.0, 0.005, 2, "%") == ("0.00%", "0.50%")
    assert figures(1.0, 0.9, 2, "%") == ("100.00%", "90.00%")
    assert figures(0.125, 0.005, 2, "%") == ("12.50%", "0.50%")
    assert figures(31.25, 20.0, 1) == ("31.2", "20.0")


def test_the_console_check_table_shows_a_few_pixels_of_mask_as_more_than_none(tmp_path: Path) -> None:
    """The item page's check table shows each check's value at 3 decimals: a mask covering 0.001% of
    the frame read "0.000" beside a threshold of "0.005", as if it were empty."""
    parts = build_console(tmp_path)
    pending = flagged_item(parts.store, 0)
    few_pixels = GateCheck(code="mask_empty", passed=False, value=0.00001, threshold=0.005)
    parts.tasks.add_pending(pending_envelope(pending.model_copy(update={"checks": [few_pixels]})))
    (task,) = parts.tasks.query()
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    page = client.get(f"/tasks/{task.task_id}")
    assert page.status_code == 200
    assert "<td>0.00001</td><td>0.00500</td>" in page.text, page.text
