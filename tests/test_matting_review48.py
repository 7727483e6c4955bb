"""Review 48, matting: what a model's refusal says about an input whose dimensions an exporter left free."""

from __future__ import annotations

import pytest

from shared.matting.session import MattingModelError, U2NetSession
from tests.support.matting import one_layer_onnx_bytes


@pytest.mark.parametrize(
    ("shape", "shown", "said"),
    [
        # torch.onnx and tf2onnx write a free dimension as -1 (or leave it unset): ONNX Runtime reads it
        # back as None, and the refusal showed "[1, 3, None, 60000]", and "1 x 60000 x 60000 pixels"
        # with no word of where a height of 60000 came from, the exporter having left it free.
        ([1, 3, -1, 60000], "1 x 3 x free x 60000", "its free height takes its width, 60000"),
        ([-1, 3, 60000, -1], "free x 3 x 60000 x free", "its free width takes its height, 60000"),
    ],
)
def test_a_too_large_model_with_a_free_side_is_told_where_its_size_came_from(
    shape: list[int], shown: str, said: str
) -> None:
    with pytest.raises(MattingModelError) as refused:
        U2NetSession(one_layer_onnx_bytes(shape), use_gpu=False, threads=1)
    message = str(refused.value)
    assert "None" not in message, message
    assert shown in message and said in message, message
    # The cap said as the docs say it, and what to change: a fixed side smaller (the batch is free).
    assert "8192 x 8192" in message and "smaller fixed height or width" in message, message
    assert "free batch" not in message, message


def test_a_too_large_fixed_batch_is_told_to_free_or_shrink_its_batch() -> None:
    with pytest.raises(MattingModelError) as refused:
        U2NetSession(one_layer_onnx_bytes([4096, 3, "height", "width"]), use_gpu=False, threads=1)
    message = str(refused.value)
    assert "4096 x 3 x height x width" in message, message
    assert "its free height and width take 320" in message, message
    assert "a free batch or a smaller fixed one" in message and "smaller fixed height" not in message, message


def test_a_model_with_free_sides_of_minus_one_opens_at_the_default_size() -> None:
    # -1 is how exporters write "free": it is taken as free, not as a size, and the model opens.
    session = U2NetSession(one_layer_onnx_bytes([-1, 3, -1, -1]), use_gpu=False, threads=1)
    session.warm_up()
    assert session.input_size == (320, 320)
