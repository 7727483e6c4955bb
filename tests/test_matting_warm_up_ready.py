"""A matting session is ready only once its whole warm-up passed, post-processing included."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from shared.matting.session import MattingModelError, open_session
from tests.support.matting import pooled_stand_in


def test_a_session_whose_warm_up_fails_in_post_processing_is_not_ready(tmp_path: Path) -> None:
    """The model call of the warm-up succeeded and set ``ready``; the map-size check after it refused the
    model, and the session still said ready (the stage's /readyz) to whoever kept it."""
    pooled_stand_in(4, tmp_path / "pooled.onnx")
    session = open_session(str(tmp_path / "pooled.onnx"), threads=1, use_gpu=False, store=None, uri_from=None)
    with pytest.raises(MattingModelError, match="pooled"):
        session.warm_up()
    assert not session.ready


def test_a_prediction_that_fails_in_post_processing_leaves_the_session_not_ready(tmp_path: Path) -> None:
    """A session served without its warm-up (``build_stage(session=...)``): the model call passed and set
    ``ready``, the map-size check after it refused every image, and /readyz said ready."""
    pooled_stand_in(4, tmp_path / "pooled.onnx")
    session = open_session(str(tmp_path / "pooled.onnx"), threads=1, use_gpu=False, store=None, uri_from=None)
    with pytest.raises(ValueError, match="pooled"):
        session.predict([Image.new("RGB", (64, 48))])
    assert not session.ready
