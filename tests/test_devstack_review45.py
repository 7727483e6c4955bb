"""Review 45 of the local stack: the metrics table's labels, and the demo report's pictures and IoUs."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from devstack.demo.report import ItemView, ReferenceView, SkuView, write_report
from devstack.metrics_doc import registry_metrics
from schemas.common import ImageRef
from shared.store import FileStore


class _EmptyTable(Collector):
    """A scrape-time collector over a table with no rows yet: labelled families with no sample."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("skuforge_test_rows", "Rows, by shelf and state.", labels=["shelf", "state"])
        yield CounterMetricFamily("skuforge_test_moves", "Moves, by action.", labels=["action"])
        yield GaugeMetricFamily("skuforge_test_oldest_seconds", "Oldest row's age.", value=0.0)


def test_a_labelled_collector_family_with_no_sample_is_documented_with_its_labels() -> None:
    """Labels were read off the samples: a family of a collector that had none at documentation time
    (an empty table) went into docs/ops.md with no labels ('—'), as if it had one series."""
    registry = CollectorRegistry()
    registry.register(_EmptyTable())
    found = {name: labels for name, _kind, labels, _help in registry_metrics(registry)}
    assert found == {
        "skuforge_test_rows": ("shelf", "state"),
        "skuforge_test_moves_total": ("action",),
        "skuforge_test_oldest_seconds": (),
    }


def _reference(store: FileStore, name: str, colour: tuple[int, int, int]) -> ReferenceView:
    pixels = np.full((60, 80, 3), 230, dtype=np.uint8)
    pixels[15:45, 20:60] = colour
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[15:45, 20:60] = 255
    return ReferenceView(
        f"{name}.jpg",
        store.put_image(f"incoming/{name}.png", pixels),
        store.put_image(f"masks/{name}.png", mask),
    )


def test_pictures_of_skus_whose_ids_differ_only_in_case_do_not_share_a_file(tmp_path: Path) -> None:
    """Pictures were named by sku_id alone: on a case-insensitive file system (macOS, Windows) "Milk"'s
    Milk-ref-0.jpg and "milk"'s milk-ref-0.jpg were one file, and both sections showed the last one."""
    store = FileStore(tmp_path / "store")
    skus = [
        SkuView(sku_id, "Milk", "carton", [_reference(store, sku_id, colour)], 0, [], [], 1)
        for sku_id, colour in [("Milk", (200, 30, 30)), ("milk", (30, 30, 200))]
    ]
    page = write_report(
        tmp_path / "out", store, skus, [], iou_threshold=0.9, console_lines=[], elapsed_s=1, complete=True
    ).read_text()
    sources = re.findall(r'<img src="(images/[^"]+)"', page)
    assert len(sources) == 4  # each SKU's photo outlined, and cut out
    assert len({source.lower() for source in sources}) == 4, sources
    for source in sources:
        assert (tmp_path / "out" / source).is_file()
    # Each section shows its own SKU's photo: red for Milk, blue for milk.
    for sku_id, channel in [("Milk", 0), ("milk", 2)]:
        section = page.split(f'<section id="{sku_id}">')[1].split("</section>")[0]
        cutout = re.findall(r'<img src="(images/[^"]+-cutout\.jpg)"', section)[0]
        product = np.asarray(Image.open(tmp_path / "out" / cutout).convert("RGB"))
        centre = product[product.shape[0] // 2, product.shape[1] // 2].astype(int)
        assert centre[channel] > 150 and centre[2 - channel] < 100, (sku_id, centre)


@pytest.mark.parametrize("iou", [math.nan, math.inf, -0.1, 1.5])
def test_an_iou_that_is_no_number_from_0_to_1_is_refused_naming_the_item(iou: float) -> None:
    """A NaN IoU stopped the report deep in the histogram (Fraction's "Invalid literal for Fraction:
    'nan'"), naming no item; the gate's events hold an IoU from 0 to 1, and the report now says so."""
    ref = ImageRef(uri="file:///k.png", sha256="0" * 64, bytes=1, width=1, height=1)
    with pytest.raises(ValueError, match=r"item-7's IoU .* is no number from 0 to 1"):
        ItemView("item-7", ref, ref, ref, iou)
