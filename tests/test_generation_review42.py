"""Generation review 42: the diffusion backend's placement keeps a turned product whole on the canvas."""

from __future__ import annotations

import numpy as np
import pytest

from services.generator import server
from shared.generation.diffusion import place_product


def _square_product() -> tuple[np.ndarray, np.ndarray]:
    photo = np.full((100, 100, 3), 30, np.uint8)
    mask = np.zeros((100, 100), np.uint8)
    mask[20:80, 20:80] = 255
    photo[mask == 255] = (200, 40, 40)
    return photo, mask


@pytest.mark.parametrize(("scale", "rotation_deg"), [(0.9, 8.0), (0.9, 30.0), (1.0, 45.0)])
def test_a_turned_product_too_big_for_the_canvas_is_shrunk_to_fit_and_records_the_scale_it_got(
    scale: float, rotation_deg: float
) -> None:
    # Turned, its box wider than the canvas, the product was centred and cut by the canvas's edges (a
    # square at scale 0.9 turned 8 degrees lost its corners), though the position was to keep it inside;
    # and the parameters recorded the scale asked for.
    photo, mask = _square_product()
    placed = place_product(
        photo, mask, 128, scale=scale, rotation_deg=rotation_deg, position_x=0.5, position_y=0.5
    )
    assert placed.scale < scale
    side_px = placed.scale * 128
    area_px = int((placed.expected_mask == 255).sum())
    assert area_px == pytest.approx(side_px**2, rel=0.03)
    # The product lies inside the canvas: its corners touch the edges, a few pixels each (44 to 216
    # pixels of the outermost rows and columns were product, cut there, before).
    border = np.concatenate(
        [
            placed.expected_mask[0],
            placed.expected_mask[-1],
            placed.expected_mask[:, 0],
            placed.expected_mask[:, -1],
        ]
    )
    assert (border == 255).sum() <= 16
    # What it records places it again exactly, as every placement's record does.
    again = place_product(
        photo, mask, 128, scale=placed.scale, rotation_deg=rotation_deg, position_x=0.5, position_y=0.5
    )
    assert again.scale == placed.scale
    assert np.array_equal(again.canvas, placed.canvas) and np.array_equal(
        again.expected_mask, placed.expected_mask
    )


def test_a_turned_product_that_fits_keeps_the_scale_asked_for() -> None:
    photo, mask = _square_product()
    placed = place_product(photo, mask, 128, scale=0.7, rotation_deg=8.0, position_x=0.0, position_y=1.0)
    assert placed.scale == 0.7
    assert int((placed.expected_mask == 255).sum()) == pytest.approx((0.7 * 128) ** 2, rel=0.03)


def test_serve_generators_help_names_every_family_of_settings_it_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It named SKUFORGE_GENERATION_* alone: the scene library (SKUFORGE_SCENES_*) the composite backend
    # places products on, and the diffusion backend's model and adapters, went unsaid.
    with pytest.raises(SystemExit) as exited:
        server.main(["--help"])
    assert exited.value.code == 0
    said = " ".join(capsys.readouterr().out.split())
    for family in ("SKUFORGE_GENERATION_*", "SKUFORGE_SCENES_*", "SKUFORGE_DIFFUSION_*"):
        assert family in said
