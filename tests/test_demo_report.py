"""The demo report's pictures and the demo's bookkeeping, without Kafka: outlines, histogram, item keys."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.topics import SKU_INGESTED
from services.demo.flow import FlowState, Seen, item_key
from services.demo.report import StageView, contact_sheet, iou_histogram_svg, outline, with_outlines


def square_mask(size: int = 40, lo: int = 10, hi: int = 30) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[lo:hi, lo:hi] = 255
    return mask


def test_outline_traces_the_border_of_the_mask_only() -> None:
    border = outline(square_mask(), width_px=1)
    assert border[10, 20] or border[9, 20]  # on the top edge
    assert not border[20, 20]  # not inside
    assert not border[2, 2]  # not far outside
    assert not outline(np.zeros((20, 20), dtype=np.uint8)).any()


def test_with_outlines_paints_the_colour_on_the_border() -> None:
    from PIL import Image

    image = Image.new("RGB", (40, 40), (0, 0, 0))
    painted = np.asarray(with_outlines(image, [(square_mask(), (40, 220, 90))]))
    assert (painted == (40, 220, 90)).all(axis=-1).sum() > 40
    assert tuple(painted[20, 20]) == (0, 0, 0)
    assert tuple(painted[0, 0]) == (0, 0, 0)


def test_histogram_counts_every_iou_and_marks_the_threshold() -> None:
    svg = iou_histogram_svg([0.2, 0.95, 0.96, 0.99, 1.0], threshold=0.9, bins=10)
    titles = [part.split("</title>")[0] for part in svg.split("<title>")[1:]]
    counts = [int(title.rsplit(": ", 1)[1]) for title in titles]
    assert len(counts) == 10 and sum(counts) == 5
    assert counts[0] == 1  # 0.2 falls in the first bar (everything at or below 0.5)
    assert counts[-1] == 4  # 0.95 up to 1.0: the last bar is [0.95, 1]
    assert "gate 0.90" in svg
    assert "#d9534f" in svg and "#2a9d4b" in svg  # below and above the gate


def test_contact_sheet_grows_by_rows() -> None:
    from PIL import Image

    tiles = [Image.new("RGB", (300, 200), (i * 20, 0, 0)) for i in range(7)]
    sheet = contact_sheet(tiles, columns=3)
    assert sheet.width == 3 * 164 and sheet.height == 3 * 164


def test_stage_throughput_and_item_keys() -> None:
    assert StageView("gate", 18, 3.0, 70).per_minute == pytest.approx(360)
    assert StageView("trainstore", 18, None, None).per_minute is None
    with pytest.raises(TypeError):
        item_key(SKU_INGESTED, object())
    state = FlowState()
    assert state.span_s("gate") is None
    state.records["image.matted.v1"]["a"] = Seen(None, 1_000)
    state.records["gate.accepted.v1"]["a"] = Seen(None, 3_500)
    assert state.span_s("gate") == pytest.approx(2.5)
    assert state.outputs("gate") == 1
