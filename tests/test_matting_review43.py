"""Matting sessions: models whose input type or output size no U2-Net has, opened and warmed up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.matting.session import MattingModelError, U2NetSession, open_session
from shared.synth import make_product, render_photo
from tests.support.matting import copied_into_cache_setting, pooled_stand_in, stand_in_onnx_bytes


def _stand_in(input_type: int, *, weights_type: Any = np.float32) -> Any:
    """The tests' stand-in U2-Net graph, with its input (and the output, and the weights, which ONNX
    types with it) of ``input_type``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(stand_in_onnx_bytes())
    weights = model.graph.initializer[0]
    weights.CopyFrom(
        numpy_helper.from_array(numpy_helper.to_array(weights).astype(weights_type), weights.name)
    )
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = input_type
    onnx.checker.check_model(model)
    return model


def test_a_float16_model_mats_as_its_float32_original(tmp_path: Path) -> None:
    """A half-precision export (N x 3 x H x W float16 in) was refused at warm-up with ORT's bare
    "Unexpected input data type. Actual: (tensor(float)), expected: (tensor(float16))": the input is
    given in the type the model takes, and its maps read back as float32."""
    import onnx
    from onnx import TensorProto

    onnx.save(_stand_in(TensorProto.FLOAT16, weights_type=np.float16), str(tmp_path / "half.onnx"))
    half = open_session(str(tmp_path / "half.onnx"), threads=1, use_gpu=False, store=None, uri_from=None)
    half.warm_up()
    full = U2NetSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    images = [render_photo(make_product(index, seed=7), 0, seed=7, size_px=128).image for index in range(3)]
    for ours, theirs in zip(half.predict(images), full.predict(images), strict=True):
        assert ours.confidence.dtype == np.float32
        assert np.abs(ours.confidence - theirs.confidence).max() < 0.01
        agree = np.count_nonzero(ours.mask == theirs.mask) / ours.mask.size
        assert agree > 0.99


def test_a_model_whose_input_is_not_floating_point_is_refused_at_opening(tmp_path: Path) -> None:
    """A model taking bytes (uint8 pixels) opened, and its warm-up failed with ORT's bare message naming
    neither the file nor its input: refused when opened, with the type it takes and the one it is given."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["d0"], axes=[1], keepdims=1),
        ],
        "bytes-in",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, ["N", 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["N", 1, 320, 320])],
    )
    path = tmp_path / "bytes-in.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(MattingModelError, match=r"bytes-in\.onnx.*'input' of tensor\(uint8\).*float"):
        open_session(str(path), threads=1, use_gpu=False, store=None, uri_from=None)


@pytest.mark.parametrize("side", [1, 4])
def test_a_model_whose_maps_are_far_smaller_than_its_input_is_refused_at_warm_up(
    tmp_path: Path, side: int
) -> None:
    """A model that pools its map to N x 1 x 1 x 1 opened and warmed up, and every image's 1 x 1 map,
    blown up to the image, was a flat mask: all product or all background, served as ready."""
    pooled_stand_in(side, tmp_path / "pooled.onnx")
    session = open_session(str(tmp_path / "pooled.onnx"), threads=1, use_gpu=False, store=None, uri_from=None)
    with pytest.raises(MattingModelError, match=rf"pooled\.onnx.*\(1, 1, {side}, {side}\).*320 x 320"):
        session.warm_up()


def test_a_model_whose_maps_are_half_its_input_size_mats(tmp_path: Path) -> None:
    """A coarser map is still an outline: resized to each image as a full-size one is."""
    pooled_stand_in(160, tmp_path / "half.onnx")
    session = open_session(str(tmp_path / "half.onnx"), threads=1, use_gpu=False, store=None, uri_from=None)
    session.warm_up()
    image = Image.new("RGB", (240, 120), "white")
    image.paste((200, 0, 0), (0, 0, 120, 60))  # the stand-in calls red product, white background
    (result,) = session.predict([image])
    assert result.mask.shape == (120, 240)
    assert result.mask[:50, :110].all() and not result.mask[70:, :].any() and not result.mask[:, 130:].any()


def test_the_matting_stage_copies_a_model_from_a_uri_into_its_cache_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The captioner's BLIP folder and the generator's models had a cache setting each; the matting
    model from a URI always went to <system temp>/skuforge-models, which only TMPDIR moved (a pod with a
    small /tmp and a volume for models could not put the copy there)."""
    from services.matting.config import MattingSettings
    from services.matting.stage import open_matting_session
    from shared.config import load_settings

    def opened(uri: str) -> object:
        matting = load_settings(MattingSettings, matting_model=uri, matting_use_gpu=False)
        return open_matting_session(matting, load_settings())

    copied_into_cache_setting(tmp_path, monkeypatch, "SKUFORGE_MATTING_CACHE_DIR", opened)


def test_a_matting_cache_that_cannot_be_written_names_its_setting(tmp_path: Path) -> None:
    """The refusal said to point TMPDIR elsewhere, the one way there was."""
    from services.matting.config import MattingSettings
    from services.matting.stage import open_matting_session
    from shared.config import ConfigError, load_settings
    from shared.store import FileStore

    ref = FileStore(tmp_path / "store").put_bytes("models/stand-in.onnx", stand_in_onnx_bytes())
    (tmp_path / "a-file").write_text("not a folder")
    matting = load_settings(
        MattingSettings,
        matting_model=ref.uri,
        matting_use_gpu=False,
        matting_cache_dir=str(tmp_path / "a-file" / "cache"),
    )
    with pytest.raises(ConfigError, match=rf"{tmp_path}/a-file/cache.*SKUFORGE_MATTING_CACHE_DIR"):
        open_matting_session(matting, load_settings())
