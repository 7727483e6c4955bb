"""Gate review: colour statistics of a large photo read a bounded sample, and still tell the truth."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

import shared.gate.checks as checks
from shared.arith.colour import srgb_to_lab
from shared.gate.checks import MAX_STATS_PIXELS, ColourStats, colour_drift, colour_stats


def _photo(height: int, width: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """A product-photo-like frame (shading, a printed stripe pattern, sensor noise) and its mask."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    shade = 0.6 + 0.4 * (yy / height)
    base = np.stack([200 * shade, 60 + 40 * np.sin(xx / 7.0), 90 * shade], axis=-1)
    base[(yy.astype(int) // 13) % 4 == 0] = (240, 230, 40)  # a label band every 52 rows
    image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 10 : -height // 10, width // 10 : -width // 10] = 255
    return image, mask


def _full_stats(
    image: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], gain: tuple[float, float, float] | None
) -> ColourStats:
    """The statistics over every product pixel, as the gate computed them before it sampled."""
    region = image[mask >= 128]
    if gain is not None:
        region = np.clip(region * np.asarray(gain) + 0.5, 0, 255).astype(np.uint8)
    lab = srgb_to_lab(region).astype(np.float64)
    mean, std = lab.mean(axis=0), lab.std(axis=0)
    return ColourStats(
        (float(mean[0]), float(mean[1]), float(mean[2])),
        (float(std[0]), float(std[1]), float(std[2])),
        int(np.count_nonzero(mask >= 128)),
    )


def test_colour_stats_of_a_large_region_converts_a_bounded_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 40-megapixel reference used to be converted to float Lab whole (gigabytes, the gate pod
    # killed for memory); here 1200 x 1000 with 768,000 product pixels stands in for it.
    image, mask = _photo(1200, 1000)
    converted: list[int] = []

    def recording(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.floating]:
        converted.append(int(np.asarray(pixels).reshape(-1, 3).shape[0]))
        return srgb_to_lab(pixels)

    monkeypatch.setattr(checks, "srgb_to_lab", recording)
    stats = colour_stats(image, mask, (1.1, 1.0, 0.9))
    assert stats is not None
    assert stats.pixels == 960 * 800  # the region's size, not the sample's
    assert converted and max(converted) <= MAX_STATS_PIXELS
    assert max(converted) >= MAX_STATS_PIXELS // 4  # a sample, not a token few pixels


@pytest.mark.parametrize("gain", [None, (1.1, 1.0, 0.9)])
def test_sampled_colour_stats_match_the_full_computation(gain: tuple[float, float, float] | None) -> None:
    image, mask = _photo(1200, 1000)
    sampled, full = colour_stats(image, mask, gain), _full_stats(image, mask, gain)
    assert sampled is not None
    assert sampled.mean_lab == pytest.approx(full.mean_lab, abs=0.3)
    assert sampled.std_lab == pytest.approx(full.std_lab, abs=0.3)
    # Drift is in Lab units against a tolerance of 20: the sample moves it by a fraction of one.
    assert colour_drift(sampled, full) < 0.5


def test_colour_stats_below_the_cap_read_every_pixel() -> None:
    # Normal-size photos (the gate bench's are 512 px): figures identical to the full computation.
    image, mask = _photo(500, 500)
    mask[:] = 0
    mask[50:450, 0:500] = 255  # exactly the cap
    assert int(np.count_nonzero(mask)) == MAX_STATS_PIXELS
    for gain in (None, (1.2, 0.9, 1.0)):
        assert colour_stats(image, mask, gain) == _full_stats(image, mask, gain)


def test_a_large_region_the_sampling_grid_misses_is_read_in_full() -> None:
    """Every other row and column of a large region: a mask off on exactly those pixels gave a sample
    of no pixels, NaN statistics, and a decision that failed validation (retried, then dead-lettered
    as a handler error instead of decided)."""
    image, _ = _photo(1100, 1100)
    mask = np.full((1100, 1100), 255, np.uint8)
    mask[::2, ::2] = 0  # 907,500 product pixels, none on the grid
    stats = colour_stats(image, mask)
    assert stats is not None and stats.pixels == 907_500
    assert all(np.isfinite(stats.mean_lab)) and all(np.isfinite(stats.std_lab))
    full = _full_stats(image, mask, None)
    assert colour_drift(stats, full) < 0.5
