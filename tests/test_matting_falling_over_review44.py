"""Review 44 of the matting tests' stand-in for a device that falls over and comes back (FallingOver)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.matting.session import F32Array, MattingModelBroken, MattingResult, U2NetSession
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


class _BackAfterTheImagesCall(U2NetSession):
    """A real device's timing, with no latch: it fails the images' call and is back for the next one,
    the blank image's."""

    failures_left = 0

    def _call(self, batch: F32Array) -> F32Array:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("CUDA failure 999: unknown error")
        return super()._call(batch)


def test_a_device_back_before_the_blank_image_is_asked_does_not_blame_the_image() -> None:
    """The blank image's check passing read as "the model is healthy, so the image is at fault": a
    plain error, handler_error, and after the last attempt a dead letter for an image that was fine.
    The images are now run again once the blank image passes, and they are matted."""
    session = _BackAfterTheImagesCall(stand_in_onnx_bytes(), threads=1, use_gpu=False, max_batch=1)
    session.warm_up()
    session.failures_left = 1
    image = Image.new("RGB", (64, 48), (90, 120, 150))

    (result,) = session.predict_each([image])

    assert isinstance(result, MattingResult)
    assert session.ready


class _FailsEveryImageButTheBlank(U2NetSession):
    """A healthy device and an input the model cannot take: every call but the blank image's fails."""

    image_calls = 0

    def _call(self, batch: F32Array) -> F32Array:
        if not np.array_equal(batch, self.preprocess([Image.new("RGB", self.input_size)])):
            self.image_calls += 1
            raise RuntimeError("INVALID_ARGUMENT: this input")
        return super()._call(batch)


def test_an_image_that_fails_again_while_the_blank_image_runs_is_still_the_images_fault() -> None:
    """Run again, the image fails again while the model still mats the blank image: the image's fault,
    a plain error (handler_error, then its dead letter), not the device's."""
    session = _FailsEveryImageButTheBlank(stand_in_onnx_bytes(), threads=1, use_gpu=False, max_batch=1)
    session.warm_up()
    image = Image.new("RGB", (64, 48), (90, 120, 150))

    with pytest.raises(RuntimeError, match="INVALID_ARGUMENT") as failed:
        session.predict_each([image])

    assert not isinstance(failed.value, MattingModelBroken)
    assert session.image_calls == 2, "the images' call, and once again after the blank image ran"
