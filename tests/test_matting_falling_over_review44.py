"""Review 44 of the matting tests' stand-in for a device that falls over and comes back (FallingOver)."""

from __future__ import annotations

import pytest
from PIL import Image

from shared.matting.session import F32Array, MattingModelBroken, MattingResult
from tests.support.matting import FallingOver, stand_in_onnx_bytes


class _BackInsideTheAttempt(FallingOver):
    """The device comes back just after an attempt's images' call failed, before its blank image's."""

    def _call(self, batch: F32Array) -> F32Array:
        try:
            return super()._call(batch)
        except RuntimeError:
            self.down = False  # where the test's flip lands on a loaded machine, now and then
            raise


def test_a_device_back_inside_an_attempt_is_back_for_the_next_one() -> None:
    """tests/test_matting_device_down.py sets ``down = False`` while the stage runs. Landing between an
    attempt's failing call and its blank-image check, the attempt read as the image's fault (a plain
    RuntimeError: handler_error, with the test's handler_max_attempts=1 a dead letter), and the test
    waited its 60 s for an output that never came. An attempt now sees one device: down, it fails as
    the device's fault (MattingModelBroken, retried), and the next attempt finds it back."""
    session = _BackInsideTheAttempt(stand_in_onnx_bytes(), threads=1, use_gpu=False, max_batch=1)
    session.warm_up()
    session.down = True
    image = Image.new("RGB", (64, 48), (90, 120, 150))

    with pytest.raises(MattingModelBroken):
        session.predict_each([image])

    assert session.failed_calls == 2, "the images' call and the blank image's"
    (result,) = session.predict_each([image])
    assert isinstance(result, MattingResult)
