"""An ONNX matting model for tests: a random-weight U2-NetP export, or a tiny stand-in graph.

The real export (``shared.matting.u2net``, needs torch) is preferred, so tests run the same
architecture and ONNX I/O the stage serves. Without torch a one-layer graph with the same names
(input ``input``, outputs ``d0``..``d6``, dynamic batch) keeps the wiring tests running.
Masks of a random model mean nothing: tests built on it check shapes and wiring, not content.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from schemas.common import ImageRef, SkuMetadata
from schemas.envelope import Envelope
from schemas.events import ImageGenerated
from schemas.topics import IMAGE_GENERATED
from shared.bus import make_envelope
from shared.matting.session import F32Array, U2NetSession

SIZE_PX = 320


@functools.cache
def random_u2netp_onnx_bytes() -> bytes:
    """The ONNX bytes of a U2-NetP with seeded random weights (the stand-in graph without torch)."""
    try:
        import torch

        from shared.matting.u2net import U2NETP, export_onnx
    except ImportError:
        return stand_in_onnx_bytes()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        # The exporter's own deprecation notices are not this suite's concern.
        warnings.simplefilter("ignore", DeprecationWarning)
        path = export_onnx(U2NETP(), Path(directory) / "u2netp-random.onnx", size_px=SIZE_PX)
        return path.read_bytes()


def stand_in_onnx_bytes(*, size_px: int = SIZE_PX, opset: int = 17, ir_version: int = 8) -> bytes:
    """A 1x1 convolution and a sigmoid: N x 3 x H x W in, seven N x 1 x H x W maps out (a U2-Net's
    interface). ``opset`` and ``ir_version`` 11 and 6 are the official U2-NetP file's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([0.8, -0.5, 0.3], np.float32).reshape(1, 3, 1, 1), "w")
    shape: list[str | int | None] = ["batch", 3, size_px, size_px]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["d0"]),
        *(helper.make_node("Identity", ["d0"], [f"d{i}"]) for i in range(1, 7)),
    ]
    graph = helper.make_graph(
        nodes,
        "stand_in_u2netp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info(f"d{i}", TensorProto.FLOAT, ["batch", 1, size_px, size_px])
            for i in range(7)
        ],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version  # 8: readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


def one_layer_onnx_bytes(shape: Sequence[str | int | None]) -> bytes:
    """A 1x1 convolution and a sigmoid with the input shape ``shape`` (N x 3 x H x W: each dimension
    fixed, named, -1 or None, as exporters write a free one) and its map ``d0`` (N x 1 x H x W)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([0.8, -0.5, 0.3], np.float32).reshape(1, 3, 1, 1), "w")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["d0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "one_layer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [shape[0], 1, shape[2], shape[3]])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def nan_where_red_onnx_bytes(*, size_px: int = SIZE_PX) -> bytes:
    """A model that outputs NaN for some images only: the square root of minus the normalised red
    channel, finite where red is under about half the image's brightest value (the warm-up's blank
    black image, a green product) and NaN where it is over (a white or red image): a healthy model
    that one input breaks, as an fp16 overflow on one photo does."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    minus_red = numpy_helper.from_array(np.array([-1.0, 0.0, 0.0], np.float32).reshape(1, 3, 1, 1), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["minus_red"]),
            helper.make_node("Sqrt", ["minus_red"], ["d0"]),
        ],
        "nan_where_red",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size_px, size_px])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["batch", 1, size_px, size_px])],
        initializer=[minus_red],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def pooled_stand_in(side: int, path: Path) -> None:
    """The stand-in (``stand_in_onnx_bytes``) with its map averaged down to ``side`` x ``side``, saved at
    ``path``: a model whose maps are coarser than its input."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(stand_in_onnx_bytes())
    stride = [320 // side] * 2
    model.graph.node.append(
        helper.make_node("AveragePool", ["d0"], ["pooled"], kernel_shape=stride, strides=stride)
    )
    del model.graph.output[:]
    model.graph.output.append(
        helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 1, side, side])
    )
    onnx.save(model, str(path))


def copied_into_cache_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, open_model: Callable[[str], object]
) -> None:
    """Checks that ``open_model(uri)`` copies a stand-in model published at a ``file://`` URI into the
    folder the setting ``variable`` names, and nothing into the system temp folder (the default cache)."""
    from shared.store import FileStore

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    ref = FileStore(tmp_path / "store").put_bytes("models/stand-in.onnx", stand_in_onnx_bytes())
    monkeypatch.setenv(variable, str(tmp_path / "models-volume"))
    open_model(ref.uri)
    assert [path.name for path in (tmp_path / "models-volume").glob("*-stand-in.onnx")]
    assert not list(temp.rglob("*.onnx"))


def batch_folding_onnx_bytes() -> bytes:
    """A badly exported model: one map per call, the mean of its images' (the batch folded away), so
    its one-image warm-up gives the one map expected."""
    import onnx

    model = onnx.load_from_string(stand_in_onnx_bytes())
    nodes = model.graph.node
    sigmoid = next(node for node in nodes if node.op_type == "Sigmoid")
    sigmoid.output[0] = "maps"
    nodes.insert(
        list(nodes).index(sigmoid) + 1,
        onnx.helper.make_node("ReduceMean", ["maps"], ["d0"], axes=[0], keepdims=1),
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def image_generated(
    image: ImageRef,
    mask: ImageRef,
    *,
    reference: ImageRef | None = None,
    expected_mask: ImageRef | None = None,
    item_id: str = "item-1",
    sku_id: str = "SKU-1",
    sku_name: str = "One",
    seed: int = 1,
    variant_index: int = 0,
) -> ImageGenerated:
    """An image.generated payload the composite backend drew of ``image``, from the photo ``reference``
    (``image`` itself when not given) and its ``mask``; the expected mask is ``expected_mask``, or
    ``mask`` when not given."""
    return ImageGenerated(
        item_id=item_id,
        sku=SkuMetadata(sku_id=sku_id, name=sku_name, category="soda can"),
        reference_photo_id="p1",
        reference_image=reference or image,
        reference_mask=mask,
        image=image,
        expected_mask=expected_mask or mask,
        backend="composite",
        model_id="synth",
        seed=seed,
        variant_index=variant_index,
    )


def generated_event(image: ImageRef, index: int = 0) -> Envelope[ImageGenerated]:
    """SKU-1's image.generated event ``item-<index + 1>`` (variant ``index``) for ``image``, which is its
    own reference and expected mask too."""
    payload = image_generated(image, image, item_id=f"item-{index + 1}", variant_index=index)
    return make_envelope(
        IMAGE_GENERATED, payload, event_id=f"{index + 1}" * 32, sku_id="SKU-1", trace_id="t", producer="t"
    )


def green_with_a_red_tinge() -> Image.Image:
    """An image ``nan_where_red_onnx_bytes`` mats: green, its left half with some red (under half)."""
    image = Image.new("RGB", (64, 48), (0, 200, 0))
    image.paste((80, 200, 0), (0, 0, 32, 48))
    return image


class FallingOver(U2NetSession):
    """A session on a device that can fall over: while ``down``, every ONNX Runtime call raises, the
    blank warm-up image's too, as every call does once a GPU's driver has failed. ``failed_calls``
    counts them.

    ``down`` is read once per attempt (``_run``: the images' call, and the blank image's when it
    fails): a test setting it while a stage runs changes the next attempt. Landing between one
    attempt's two calls, it made that attempt the images' fault (a handler_error), a timing the test
    did not mean and a loaded machine hit now and then."""

    down = False
    failed_calls = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attempt = threading.local()

    def _run(self, batch: F32Array) -> F32Array:
        self._attempt.down = self.down
        try:
            return super()._run(batch)
        finally:
            del self._attempt.down

    def _call(self, batch: F32Array) -> F32Array:
        if getattr(self._attempt, "down", self.down):
            self.failed_calls += 1
            raise RuntimeError("CUDA failure 999: unknown error")
        return super()._call(batch)


@pytest.fixture(scope="session")
def random_u2netp_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a random-weight U2-NetP ONNX file (exported once per test session)."""
    path = tmp_path_factory.mktemp("matting") / "u2netp-random.onnx"
    path.write_bytes(random_u2netp_onnx_bytes())
    return path


def stop_at_png(number: int) -> Any:
    """A PNG writer that presses Ctrl-C before the ``number``-th PNG (1-based) is written."""
    Image.init()  # the PNG plugin, when no earlier test has loaded it
    save_png = Image.SAVE["PNG"]
    saved: list[str] = []

    def stopped(image: Image.Image, fp: Any, filename: Any) -> None:
        if len(saved) == number - 1:
            raise KeyboardInterrupt
        saved.append(image.mode)
        save_png(image, fp, filename)

    return stopped
