"""A held-out photo padded with plain bars at its sides is a copy of the store photo it pads, however
its bars' edge falls on the pixels the leakage check hashes; a copy is named in ingest's words."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.evaluation.experiment import encode_jpeg
from shared.evaluation.leakage import LeakageError, check_no_near_duplicates, copy_hashes, heldout_hash
from shared.images import encode_png


def _shaded_photo(edge_brightness: int) -> Image.Image:
    """A 348 px square photo whose grey turns flat towards its left and right edges, darker there
    (``edge_brightness`` -1) or lighter (1): the edge steps are small, as on a carton's smooth side."""
    y, x = np.mgrid[0:348, 0:348].astype(np.float32)
    grey = 128 + edge_brightness * 30 * np.cos(2 * np.pi * x / 348) + 20 * np.sin(y / 9)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2).astype(np.uint8))


@pytest.mark.parametrize(("colour", "edge_brightness"), [((0, 0, 0), 1), ((255, 255, 255), -1)])
@pytest.mark.parametrize("bar_px", [17, 87, 139])
def test_a_held_out_photo_with_side_bars_ending_inside_a_hashed_pixel_is_a_copy(
    colour: tuple[int, int, int], edge_brightness: int, bar_px: int
) -> None:
    # An odd bar width ends halfway through a pixel of the photo's halved decode: that column, half
    # bar and half photo, was kept with the photo and darkened (or lightened) its edge, and the padded
    # copy read 29-31 bits from its original and passed (the juice carton of the in-store samples,
    # black side bars: 14).
    photo = _shaded_photo(edge_brightness)
    padded = Image.new("RGB", (photo.width + 2 * bar_px, photo.height), colour)
    padded.paste(photo, (bar_px, 0))
    held = heldout_hash(encode_jpeg(padded, quality=85))
    stored = copy_hashes(encode_png(photo))
    assert held is not None and stored is not None
    with pytest.raises(LeakageError, match=r"looks like a copy of held-out padded\.jpg"):
        check_no_near_duplicates([("padded.jpg", held)], training=[("stored.png", stored)])


def test_a_mirrored_copy_is_named_in_the_words_ingest_names_one_in() -> None:
    # The same kind of copy read "mirrored, perhaps resized" here and "mirrored, perhaps resized or
    # re-encoded" in ingest's warning: a re-encoded JPEG copy was not said to be one.
    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    grey = 128 + 60 * np.sin(x / 13) + 50 * np.cos(y / 7 + x / 29)
    photo = Image.fromarray(np.stack([grey, grey[::-1], 255 - grey], -1).clip(0, 255).astype(np.uint8))
    held = heldout_hash(encode_png(photo))
    mirrored = copy_hashes(encode_jpeg(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), quality=60))
    assert held is not None and mirrored is not None
    with pytest.raises(LeakageError, match=r"apart: mirrored, perhaps resized or re-encoded\)"):
        check_no_near_duplicates([("held.png", held)], training=[("mirrored.jpg", mirrored)])
