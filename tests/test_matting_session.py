"""Matting sessions without Kafka: reference pre-processing, batching, thresholds, clean-up, opening."""

from __future__ import annotations

import re
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.arith.masks import clean_mask, connected_components
from shared.matting import session as matting
from shared.matting.session import (
    MaskOptions,
    MattingModelError,
    MattingModelMissing,
    MattingResult,
    U2NetPSession,
    U2NetSession,
    choose_providers,
    mask_figures,
    normalise_min_max,
    open_session,
    otsu_thresholds,
    u2net_preprocess,
)
from shared.store import FileStore
from shared.synth import make_product, render_photo

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def photos(count: int, size_px: int = 256) -> list[Image.Image]:
    return [
        render_photo(make_product(index, seed=7), 0, seed=7, size_px=size_px).image for index in range(count)
    ]


def reference_preprocess(image: Image.Image, size_px: int = 320) -> np.ndarray:
    """The U2-Net reference (ToTensorLab, flag 0), written the slow way: float64, one channel at a time."""
    resized = np.array(image.convert("RGB").resize((size_px, size_px), Image.Resampling.BILINEAR))
    scaled = resized / np.max(resized)
    normalised = np.zeros((size_px, size_px, 3))
    for channel in range(3):
        normalised[:, :, channel] = (scaled[:, :, channel] - MEAN[channel]) / STD[channel]
    return normalised.transpose((2, 0, 1))


# --- pre-processing --------------------------------------------------------------------------


def test_preprocess_equals_the_reference_implementation() -> None:
    images = [*photos(2, 300), Image.new("RGB", (90, 40), (10, 120, 60)), photos(1, 500)[0].convert("L")]
    batch = u2net_preprocess(images)
    assert batch.dtype == np.float32
    assert batch.shape == (4, 3, 320, 320)
    expected = np.stack([reference_preprocess(image) for image in images])
    assert np.abs(batch - expected).max() <= 1e-5


def test_preprocess_of_a_black_image_is_finite() -> None:
    batch = u2net_preprocess([Image.new("RGB", (64, 64))])
    assert np.isfinite(batch).all()


# --- thresholds and clean-up -----------------------------------------------------------------


def bimodal_map(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Background around 0.05, product around 0.35: a fixed 0.5 finds nothing, Otsu finds the product."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((120, 160), dtype=bool)
    truth[30:90, 50:120] = True
    confidence = np.where(truth, rng.normal(0.35, 0.03, truth.shape), rng.normal(0.05, 0.03, truth.shape))
    return np.clip(confidence, 0.0, 1.0).astype(np.float32), truth


def test_otsu_threshold_splits_a_bimodal_map() -> None:
    confidence, truth = bimodal_map()
    (threshold,) = otsu_thresholds(confidence[None])
    assert 0.12 < threshold < 0.28
    assert np.array_equal(confidence >= threshold, truth)
    assert not (confidence >= 0.5).any()


def test_otsu_thresholds_each_map_of_a_batch_on_its_own() -> None:
    low, _ = bimodal_map(1)
    high = np.clip(low + 0.5, 0.0, 1.0)
    thresholds = otsu_thresholds(np.stack([low, high, np.full_like(low, 0.7)]))
    assert thresholds[1] == pytest.approx(thresholds[0] + 0.5, abs=2 / 256)
    assert thresholds[2] == 0.5  # a flat map has no split


def test_min_max_normalisation_per_map() -> None:
    maps = np.stack(
        [np.linspace(0.2, 0.4, 100, dtype=np.float32).reshape(10, 10), np.full((10, 10), 0.3, np.float32)]
    )
    normalised = normalise_min_max(maps)
    assert normalised[0].min() == 0.0 and normalised[0].max() == pytest.approx(1.0)
    assert np.allclose(normalised[1], 0.3)  # flat: kept, not NaN


def test_cleanup_removes_a_small_blob_and_fills_a_hole() -> None:
    mask = np.zeros((200, 200), dtype=bool)
    mask[40:160, 40:160] = True
    mask[90:110, 90:110] = False  # a hole inside the product
    mask[5:9, 180:184] = True  # 16 pixels: under 0.2% of 40,000
    mask[100:200, 0:10] = True  # a big blob touching the border stays
    mask[190:200, 60:80] = True
    mask[195:200, 65:75] = False  # a notch open to the border is not a hole
    cleaned = clean_mask(mask, min_blob_fraction=0.002)
    assert cleaned[90:110, 90:110].all()
    assert not cleaned[5:9, 180:184].any()
    assert cleaned[100:200, 0:10].all()
    assert not cleaned[195:200, 65:75].any()
    assert cleaned.sum() == 120 * 120 + 100 * 10 + 10 * 20 - 5 * 10


def test_cleanup_keeps_the_largest_blob_even_when_small() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:13, 10:13] = True
    mask[50:52, 50:52] = True
    cleaned = clean_mask(mask, min_blob_fraction=0.5)
    assert cleaned[10:13, 10:13].all() and not cleaned[50:52, 50:52].any()
    assert not clean_mask(np.zeros((8, 8), dtype=bool), 0.5).any()


def flood_fill_labels(mask: np.ndarray, diagonal: bool) -> np.ndarray:
    """A plain breadth-first flood fill, the obviously-correct reference for the run labelling."""
    labels = np.full(mask.shape, -1)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if diagonal:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    count = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start] >= 0:
            continue
        labels[start] = count
        queue = deque([start])
        while queue:
            row, col = queue.popleft()
            for d_row, d_col in steps:
                r, c = row + d_row, col + d_col
                if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c] and labels[r, c] < 0:
                    labels[r, c] = count
                    queue.append((r, c))
        count += 1
    return labels


@pytest.mark.parametrize("diagonal", [True, False])
def test_connected_components_match_a_flood_fill(diagonal: bool) -> None:
    for seed in range(5):
        mask = np.random.default_rng(seed).random((37, 53)) < 0.45
        rows, starts, ends, labels = connected_components(mask, diagonal=diagonal)
        pixel_labels = np.full(mask.shape, -1)
        for row, start, end, label in zip(rows, starts, ends, labels, strict=True):
            pixel_labels[row, start:end] = label
        expected = flood_fill_labels(mask, diagonal)
        assert np.array_equal(pixel_labels >= 0, mask)
        # Same partition: the pairs (ours, reference) are one-to-one.
        pairs = set(zip(pixel_labels[mask], expected[mask], strict=True))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


# --- results ---------------------------------------------------------------------------------


def test_result_figures_and_cutout() -> None:
    confidence = np.zeros((4, 5), dtype=np.float32)
    confidence[1:3, 1:4] = 0.8
    mask = np.where(confidence > 0.5, np.uint8(255), np.uint8(0))
    result = MattingResult(confidence, mask, *mask_figures(confidence, mask, mask.size))
    assert result.foreground_fraction == pytest.approx(6 / 20)
    assert result.mean_confidence == pytest.approx(0.8)
    cutout = result.cutout(Image.new("RGB", (5, 4), (200, 10, 10)))
    assert cutout.mode == "RGBA" and cutout.size == (5, 4)
    assert np.array_equal(np.asarray(cutout)[..., 3], mask)
    with pytest.raises(ValueError, match="5x4"):
        result.cutout(Image.new("RGB", (4, 5)))
    assert mask_figures(confidence, np.zeros_like(mask), mask.size) == (0.0, 0.0)


# --- sessions on a real ONNX model -----------------------------------------------------------


def test_batched_predict_equals_one_by_one(random_u2netp_onnx: Path) -> None:
    images = photos(5)
    batched = U2NetPSession(random_u2netp_onnx, threads=2, max_batch=4).predict(images)
    single = U2NetPSession(random_u2netp_onnx, threads=2, max_batch=1)
    for image, result in zip(images, batched, strict=True):
        (alone,) = single.predict([image])
        assert np.allclose(result.confidence, alone.confidence, atol=1e-4)
        # The random model's map is nearly flat, so min-max stretches float noise: allow a few pixels.
        assert np.mean(result.mask != alone.mask) < 1e-3


def test_on_the_cpu_two_shape_fixed_sessions_give_the_free_graphs_answer(random_u2netp_onnx: Path) -> None:
    """Calls are of CPU_CALL_IMAGES images or of one, each on a session with every shape fixed. One
    session per call size (1 to 4) and the free one each held a copy of the weights: 2.5 GB resident
    for a full U2-Net."""
    import onnxruntime as ort

    images = photos(7)
    session = U2NetPSession(random_u2netp_onnx, threads=2, use_gpu=False, max_batch=6)
    batch = session.preprocess(images)
    free = ort.InferenceSession(str(random_u2netp_onnx), providers=["CPUExecutionProvider"])
    (expected,) = free.run([session.output_name], {session.input_name: batch})
    results = session.predict(images)  # chunks of 6 and 1: calls of 4, 1, 1 and 1
    maps = session._run(batch)  # all 7 at once: calls of 4, 1, 1 and 1
    assert matting.CPU_CALL_IMAGES == 4 and sorted(session._by_batch) == [1, 4]
    held = {id(ort_session): ort_session for ort_session in [session._session, *session._by_batch.values()]}
    assert len(held) == 2, "the free session is kept beside the shape-fixed ones"
    for ort_session in held.values():
        free_dims = [dim for dim in ort_session.get_inputs()[0].shape if not isinstance(dim, int)]
        assert not free_dims, f"a session still has free dimensions {free_dims}"
    assert maps.shape == expected.shape
    assert np.abs(maps - expected).max() <= 1e-4
    assert len(results) == 7


def test_the_masks_are_those_of_a_session_per_call_size() -> None:
    """The committed model's masks are the same, pixel for pixel, as when a chunk of 7 ran as calls of
    4 and 3 on sessions fixed at those sizes (before two sessions served every call)."""
    images = photos(7)
    session = U2NetPSession(matting.MODELS_DIR / "u2netp-skuforge.onnx", threads=2, use_gpu=False)
    batch = session.preprocess(images)
    assert session._batch_dim is not None
    per_size = [
        session._open(session.providers, {**session._size_dims, session._batch_dim: len(part)}).run(
            [session.output_name], {session.input_name: part}
        )[0]
        for part in (batch[:4], batch[4:])
    ]
    before = session.postprocess(np.concatenate(per_size), [image.size for image in images])
    after = session.predict(images)
    assert any(result.mask.any() for result in after), "a test of masks needs some product found"
    for was, now in zip(before, after, strict=True):
        assert np.array_equal(was.mask, now.mask)


def test_outputs_have_each_images_own_size(random_u2netp_onnx: Path) -> None:
    images = [
        Image.new("RGB", (300, 200), (250, 250, 250)),
        photos(1, 333)[0],
        Image.new("L", (64, 480), 90),
        Image.new("RGB", (320, 320), (0, 0, 255)),
    ]
    session = U2NetPSession(random_u2netp_onnx, max_batch=8, mask=MaskOptions(threshold="otsu"))
    results = session.predict(images)
    assert len(results) == len(images)
    for image, result in zip(images, results, strict=True):
        width, height = image.size
        assert result.confidence.shape == result.mask.shape == (height, width)
        assert result.confidence.dtype == np.float32 and result.mask.dtype == np.uint8
        assert result.confidence.min() >= 0.0 and result.confidence.max() <= 1.0
        assert set(np.unique(result.mask)) <= {0, 255}
        assert 0.0 <= result.foreground_fraction <= 1.0 and 0.0 <= result.mean_confidence <= 1.0
        assert result.cutout(image).size == image.size
    assert session.predict([]) == []


@pytest.mark.parametrize("size", [(0, 40), (40, 0)])
def test_a_zero_size_image_is_named_before_any_is_matted(
    random_u2netp_onnx: Path, size: tuple[int, int]
) -> None:
    """Before, a 0xN image failed the whole call in Pillow's resize, "height and width must be > 0",
    naming no image (a box is refused naming its index: ``boxes[1] ...``)."""
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False, max_batch=2)
    with pytest.raises(ValueError) as refused:
        session.predict([Image.new("RGB", (40, 40)), Image.new("RGB", size)])
    assert str(refused.value).startswith(f"images[1] is {size[0]}x{size[1]}"), str(refused.value)
    assert not session.ready, "no image may be matted before every image is checked"


def test_session_reads_the_model_and_names_it(random_u2netp_onnx: Path) -> None:
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=True)
    assert session.providers == ["CPUExecutionProvider"]  # no CUDA on this machine
    assert (session.input_name, session.output_name, session.size_px) == ("input", "d0", 320)
    assert session.model_id.startswith("u2netp-random.onnx@sha256:")
    assert (
        session.model_id
        == U2NetPSession(random_u2netp_onnx.read_bytes(), model_name="u2netp-random.onnx").model_id
    )
    assert not session.ready
    session.warm_up()
    assert session.ready


def test_a_model_file_replaced_after_opening_serves_every_batch_size_from_the_first(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    # On CPU a session per batch size opens on first use; a training run or a redeploy may have
    # replaced the file by then. Every size must still run the model the session was opened on.
    path = tmp_path / "model.onnx"
    path.write_bytes(random_u2netp_onnx.read_bytes())
    session = U2NetPSession(path, threads=1, max_batch=4)
    images = photos(2)
    alone = [session.predict([image])[0] for image in images]
    path.write_bytes(b"a half-written model")
    together = session.predict(images)  # the batch-2 session opens now
    for one, other in zip(alone, together, strict=True):
        assert np.allclose(one.confidence, other.confidence, atol=1e-4)


def test_a_model_that_is_not_image_to_mask_is_refused_by_its_input(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    vector_in = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])
    vector_out = helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["N", 3])
    relu = helper.make_node("Relu", ["input"], ["d0"])
    graph = helper.make_graph([relu], "flat", [vector_in], [vector_out])
    path = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(MattingModelError, match=r"takes a 2-D input 'input'.*N x 3 x H x W"):
        open_session(str(path), threads=1, use_gpu=False, store=None, uri_from=None)


def test_a_model_that_outputs_an_image_not_a_mask_is_refused_at_warm_up(tmp_path: Path) -> None:
    """An identity of the image (N x 3 x H x W out) opened, warmed up and served its red channel as
    the mask."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["d0"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["N", 3, 32, 32])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = open_session(str(path), threads=1, use_gpu=False, store=None, uri_from=None)
    with pytest.raises(MattingModelError, match=r"does not run as .*3 channels per image; a mask is 1"):
        session.warm_up()


@pytest.mark.parametrize("shape", [["N", "H", "W", 3], ["N", 320, 320, 3], ["N", 1, 320, 320]])
def test_a_model_whose_input_is_not_three_channels_second_is_refused(
    tmp_path: Path, shape: list[Any]
) -> None:
    """A channels-last export opened with "size" 3: every image was shrunk to 3 x 3, the stage went
    ready, and every mask was noise."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["input"], ["d0"])],
        "channels",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, shape)],
    )
    path = tmp_path / "channels.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(MattingModelError, match=r"not 3 colour channels second.*N x 3 x H x W"):
        open_session(str(path), threads=1, use_gpu=False, store=None, uri_from=None)


def test_a_model_that_outputs_nan_is_an_error_not_an_empty_mask(tmp_path: Path) -> None:
    """A NaN anywhere in a map used to make the whole map NaN and the mask silently empty (the gate
    then flagged every image for a person to review); a model that outputs NaN is broken, and says so."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # sqrt of the normalised red channel: finite where the photo is bright, NaN where it is dark.
    red = numpy_helper.from_array(np.array([1.0, 0.0, 0.0], np.float32).reshape(1, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["red"]), helper.make_node("Sqrt", ["red"], ["d0"])],
        "sqrt-red",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["batch", 1, 320, 320])],
        initializer=[red],
    )
    path = tmp_path / "sqrt-red.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = U2NetSession(path, threads=1, use_gpu=False)
    bright = Image.new("RGB", (64, 64), "white")
    assert session.predict([bright])[0].mask.all() and session.ready
    half_dark = bright.copy()
    half_dark.paste((0, 0, 0), (0, 0, 32, 64))
    with pytest.raises(MattingModelError, match=r"sqrt-red.onnx.*NaN.*1 of 2 images"):
        session.predict([bright, half_dark])
    assert not session.ready
    with pytest.raises(MattingModelError, match="NaN"):  # the warm-up's blank image: refused at start-up
        session.warm_up()


@pytest.mark.parametrize("images", [1, 3, 4, 5])
def test_a_model_that_returns_no_map_is_refused_in_every_call_size(images: int) -> None:
    """On the CPU a chunk under four images runs one image a call (``_calls``): each of those calls is
    checked for one map per image, as the four-image call is, so no image goes without its result."""
    import onnx
    from onnx import TensorProto, helper

    from tests.support.matting import stand_in_onnx_bytes

    model = onnx.load_from_string(stand_in_onnx_bytes())
    nodes = model.graph.node
    sigmoid = next(node for node in nodes if node.op_type == "Sigmoid")
    sigmoid.output[0] = "maps"
    model.graph.initializer.extend(
        helper.make_tensor(name, TensorProto.INT64, [1], [0]) for name in ("start", "end", "axis")
    )
    nodes.insert(
        list(nodes).index(sigmoid) + 1, helper.make_node("Slice", ["maps", "start", "end", "axis"], ["d0"])
    )
    session = U2NetPSession(model.SerializeToString(), threads=1, use_gpu=False)

    with pytest.raises(MattingModelError, match=r"\(0, 1, 320, 320\) for [14] images"):
        session.predict([Image.new("RGB", (64, 48), "red")] * images)
    assert not session.ready


def test_cuda_is_chosen_only_when_available_and_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(True, cuda) == cuda
    assert choose_providers(False, cuda) == ["CPUExecutionProvider"]
    assert choose_providers(True, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    monkeypatch.setattr(
        matting.ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"]
    )
    assert choose_providers(True) == ["CPUExecutionProvider"]


# --- opening models --------------------------------------------------------------------------


@pytest.mark.parametrize("uri_from", ["SKUFORGE_MATTING_MODEL", "SKUFORGE_CAPTIONER_MATTING_MODEL", None])
def test_missing_committed_model_says_how_to_make_it(
    uri_from: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The help named both services' settings whatever the model came from: a tool's option, one service's
    # setting, or nothing (a tool that always runs the committed model, where no setting points elsewhere).
    monkeypatch.setattr(matting, "MODELS_DIR", tmp_path / "models")
    with pytest.raises(MattingModelMissing) as info:
        open_session(None, threads=1, use_gpu=False, store=None, uri_from=uri_from)
    message = str(info.value)
    assert "u2netp-skuforge.onnx" in message
    assert "restore it with git" in message and "docs/matting.md" in message
    if uri_from is None:
        assert "SKUFORGE_" not in message and "point elsewhere" not in message
    else:
        assert f"Or point elsewhere: {uri_from} takes a registered name" in message
        assert message.count("SKUFORGE_") == 1


@pytest.mark.parametrize("uri_from", ["SKUFORGE_CAPTIONER_MATTING_MODEL", None])
def test_a_missing_model_file_names_only_the_setting_it_came_from(
    uri_from: str | None, tmp_path: Path
) -> None:
    with pytest.raises(MattingModelMissing) as info:
        open_session(str(tmp_path / "nope.onnx"), threads=1, use_gpu=False, store=None, uri_from=uri_from)
    missing = f"no matting model file at {tmp_path / 'nope.onnx'}"
    if uri_from is None:  # a path of the caller's own: no setting to point elsewhere
        assert str(info.value) == missing
    else:
        assert str(info.value).startswith(f"{missing}: {uri_from} takes a registered name (u2netp, ")
        assert str(info.value).count("SKUFORGE_") == 1


def test_open_by_name_path_and_uri(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, random_u2netp_onnx: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "u2netp-skuforge.onnx").write_bytes(random_u2netp_onnx.read_bytes())
    monkeypatch.setattr(matting, "MODELS_DIR", models)
    by_default = open_session(None, threads=1, use_gpu=False, store=None, uri_from=None)
    assert isinstance(by_default, U2NetPSession)
    assert by_default.model_id.startswith("u2netp-skuforge.onnx@")

    by_path = open_session(
        str(random_u2netp_onnx), threads=1, use_gpu=False, store=None, max_batch=3, uri_from=None
    )
    assert type(by_path) is U2NetSession and by_path.max_batch == 3

    store = FileStore(tmp_path / "store")
    ref = store.put_bytes("models/u2netp-v7.onnx", random_u2netp_onnx.read_bytes())
    by_uri = open_session(ref.uri, threads=1, use_gpu=False, store=store, uri_from="the test")
    assert by_uri.model_id == f"u2netp-v7.onnx@sha256:{ref.sha256[:12]}"
    outside_the_store = open_session(ref.uri, threads=1, use_gpu=False, store=None, uri_from="the test")
    assert outside_the_store.model_id == by_uri.model_id


def test_open_refusals_are_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(matting, "MODELS_DIR", tmp_path)
    with pytest.raises(MattingModelMissing, match=r"u2netp-skuforge-int8\.onnx"):
        open_session("u2netp-int8", threads=1, use_gpu=False, store=None, uri_from=None)
    with pytest.raises(MattingModelError, match="needs its file"):
        open_session("u2net-custom", threads=1, use_gpu=False, store=None, uri_from=None)
    with pytest.raises(MattingModelMissing, match="SKUFORGE_MATTING_MODEL takes a registered name"):
        open_session(
            str(tmp_path / "nope.onnx"),
            threads=1,
            use_gpu=False,
            store=None,
            uri_from="SKUFORGE_MATTING_MODEL",
        )
    with pytest.raises(MattingModelMissing, match="no matting model at"):
        open_session(
            f"file://{tmp_path}/gone.onnx", threads=1, use_gpu=False, store=None, uri_from="the test"
        )
    (tmp_path / "folder.onnx").mkdir()  # the store's detail, kept: what is there instead of a model
    with pytest.raises(
        MattingModelMissing, match=r"no matting model at file://.*folder\.onnx: a folder, not a file"
    ):
        open_session(
            f"file://{tmp_path}/folder.onnx", threads=1, use_gpu=False, store=None, uri_from="the test"
        )
    with pytest.raises(MattingModelError, match="cannot fetch the matting model https://"):
        open_session(
            "https://models.example/u2netp.onnx", threads=1, use_gpu=False, store=None, uri_from="the test"
        )
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(MattingModelError, match="cannot load"):
        open_session(str(tmp_path / "junk.onnx"), threads=1, use_gpu=False, store=None, uri_from=None)


@pytest.mark.parametrize(
    "error", [PermissionError(13, "Permission denied"), OSError(5, "Input/output error")]
)
def test_a_model_file_that_cannot_be_read_is_a_config_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, random_u2netp_onnx: Path, error: OSError
) -> None:
    """A model file the stage's user may not read (a mounted file of another owner, mode 0600), or one on
    a failing disk, passed the is-a-file check and ended the stage at start-up in an OSError traceback
    instead of the ConfigError line naming the file."""
    from services.matting.config import MattingSettings
    from services.matting.stage import open_matting_session
    from shared.config import ConfigError, load_settings

    model = tmp_path / "u2netp-mine.onnx"
    model.write_bytes(random_u2netp_onnx.read_bytes())
    read_bytes = Path.read_bytes

    def unreadable(path: Path) -> bytes:
        if path == model:
            raise error
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    matting_settings = load_settings(MattingSettings, matting_model=str(model), matting_use_gpu=False)
    said = rf"cannot read the matting model {re.escape(str(model))}: .*{error.strerror}"
    with pytest.raises(ConfigError, match=said):
        open_matting_session(matting_settings, load_settings())


def test_a_model_path_that_cannot_be_looked_up_is_a_config_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Path.is_file() answers False only for a missing file; a folder on the way this user may not enter
    (EACCES: another user's home, a volume mounted 0700) or a name over 255 bytes raises. The stage
    died at start-up in an OSError traceback before the is-a-file check could name the setting."""
    from services.matting.config import MattingSettings
    from services.matting.stage import open_matting_session
    from shared.config import ConfigError, load_settings

    too_long = tmp_path / ("u2netp-" + "x" * 300 + ".onnx")
    locked = tmp_path / "locked" / "u2netp.onnx"
    stat = Path.stat

    def refused(path: Path, **kwargs: Any) -> Any:
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return stat(path, **kwargs)

    monkeypatch.setattr(Path, "stat", refused)  # as root the folder's mode alone would not refuse
    for model, said in ((too_long, "File name too long"), (locked, "Permission denied")):
        matting_settings = load_settings(MattingSettings, matting_model=str(model), matting_use_gpu=False)
        with pytest.raises(
            ConfigError, match=rf"cannot read the matting model {re.escape(str(model))}: .*{said}"
        ):
            open_matting_session(matting_settings, load_settings())
    monkeypatch.setenv("SKUFORGE_OFFICIAL_U2NETP", str(locked))
    with pytest.raises(MattingModelError, match=rf"cannot read the matting model {re.escape(str(locked))}"):
        open_session("u2netp-official", threads=1, use_gpu=False, store=None, uri_from=None)


def test_a_model_cache_that_cannot_be_written_is_named_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, random_u2netp_onnx: Path
) -> None:
    """A model from a URI is copied into the model cache (<system temp>/skuforge-models). Where that
    cannot be written (a read-only /tmp, a cache folder another user made), the stage died at start-up
    with a bare OSError traceback naming a temporary file, instead of the ConfigError line that says
    which model and what to do."""
    store = FileStore(tmp_path / "store")
    ref = store.put_bytes("models/u2netp-v7.onnx", random_u2netp_onnx.read_bytes())
    not_a_folder = tmp_path / "temp"
    not_a_folder.write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    with pytest.raises(MattingModelError, match=r"model cache .*temp/skuforge-models.*TMPDIR"):
        open_session(ref.uri, threads=1, use_gpu=False, store=store, uri_from="the test")


def test_a_model_with_a_long_object_name_opens(tmp_path: Path, random_u2netp_onnx: Path) -> None:
    """The cache copy was named ``<digest16>-<object name>``: a name over 238 bytes (S3 allows 1024)
    failed as ENAMETOOLONG, reported as a model cache that cannot be written, pointing at TMPDIR.
    (The names here fit the FileStore's own file system; on S3 they may be longer still.)"""
    store = FileStore(tmp_path / "store")
    name = "u2netp-" + "fine-tuned-on-the-dairy-aisle-" * 8 + "v7.onnx"  # 254 bytes
    ref = store.put_bytes(f"models/{name}", random_u2netp_onnx.read_bytes())
    opened = open_session(ref.uri, threads=1, use_gpu=False, store=store, uri_from="the test")
    assert opened.model_id == f"{name}@sha256:{ref.sha256[:12]}"


def test_a_model_uri_that_escapes_its_store_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    """A URI inside the stage's own store is read by key; one with a '..' segment is refused as
    ``unsafe_key``, a BadInput that open_session let through: the stage died at start-up with a
    traceback instead of the ConfigError line naming SKUFORGE_MATTING_MODEL."""
    from services.matting.config import MattingSettings
    from services.matting.stage import open_matting_session
    from shared.config import ConfigError, load_settings

    store = FileStore(tmp_path / "store")
    uri = f"{store.base_uri}/models/../m.onnx"
    settings = load_settings(store_uri=store.base_uri)
    with pytest.raises(
        ConfigError, match=r"cannot fetch the matting model .*unsafe_key.*SKUFORGE_MATTING_MODEL"
    ):
        open_matting_session(load_settings(MattingSettings, matting_model=uri), settings, store)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_a_cuda_provider_that_does_not_start_is_said_not_hidden(
    random_u2netp_onnx: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime-gpu without its CUDA libraries starts on the CPU and only prints to stderr: the
    matting stage then ran many times slower with nothing in its logs to say why."""
    import onnxruntime as ort

    from shared.matting import session as session_module

    preloaded: list[bool] = []
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: preloaded.append(True), raising=False)
    with caplog.at_level("WARNING", logger="skuforge.matting"):
        session = session_module.U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=True)
    assert session.providers == ["CPUExecutionProvider"] and session.gpu_fallback
    assert preloaded == [True], "the nvidia wheels' libraries are preloaded before the session starts"
    assert any("matting runs on the CPU" in record.getMessage() for record in caplog.records)

    caplog.clear()
    with caplog.at_level("WARNING", logger="skuforge.matting"):
        cpu = session_module.U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False)
    assert not cpu.gpu_fallback and not caplog.records, "CPU asked for: nothing to warn of"


def _stand_in_model(batch: str | int = "batch") -> Any:
    """The tests' stand-in U2-Net graph (a 1x1 convolution and a sigmoid), with the batch given."""
    import onnx

    from tests.support.matting import stand_in_onnx_bytes

    model = onnx.load_from_string(stand_in_onnx_bytes())
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if isinstance(batch, int):
            dim.dim_value = batch
        else:
            dim.dim_param = batch
    return model


def test_a_model_exported_with_a_fixed_batch_of_two_runs_any_number_of_images(tmp_path: Path) -> None:
    """It failed its warm-up ("Got: 1 Expected: 2") and any odd last chunk: the call is padded."""
    import onnx

    onnx.save(_stand_in_model(), str(tmp_path / "free.onnx"))
    onnx.save(_stand_in_model(2), str(tmp_path / "fixed.onnx"))
    free = U2NetSession(tmp_path / "free.onnx", threads=1, use_gpu=False)
    fixed = U2NetSession(tmp_path / "fixed.onnx", threads=1, use_gpu=False, max_batch=8)
    fixed.warm_up()
    assert fixed.max_batch == 2
    images = photos(3, size_px=96)
    for ours, theirs in zip(fixed.predict(images), free.predict(images), strict=True):
        assert np.array_equal(ours.mask, theirs.mask)


@pytest.mark.parametrize("height, width", [(192, 256), (192, "width")])
def test_a_model_with_a_fixed_non_square_input_mats_at_its_own_size(
    tmp_path: Path, height: int, width: int | str
) -> None:
    """A file exported at 256x192 (input N x 3 x 192 x 256) was given 256x256 inputs and refused at
    warm-up (ORT: "Got: 256 Expected: 192"): each image is resized to the model's H x W, the map back to
    the image's size. A free width takes the fixed height (a model trained square)."""
    import onnx

    model = _stand_in_model()
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_value = height
        if isinstance(width, int):
            dims[3].dim_value = width
        else:
            dims[3].dim_param = width
    onnx.save(model, str(tmp_path / "wide.onnx"))
    session = open_session(str(tmp_path / "wide.onnx"), threads=1, use_gpu=False, store=None, uri_from=None)
    session.warm_up()
    image = Image.new("RGB", (240, 120), "white")
    image.paste((200, 0, 0), (0, 0, 120, 60))  # the stand-in calls red product, white background
    (result,) = session.predict([image])
    expected = np.zeros((120, 240), dtype=bool)
    expected[:60, :120] = True
    predicted = result.mask > 0
    assert (predicted & expected).sum() / (predicted | expected).sum() > 0.95


def test_a_local_model_with_its_weights_in_a_separate_file_opens(tmp_path: Path) -> None:
    """Read into memory, ORT had no folder to find ``model.onnx.data`` in: "model_path must not be
    empty". The weights are taken into the model in memory, so they are part of its id, and a
    snapshot folder of links (the Hugging Face cache's layout) finds them. A model given as bytes
    (or fetched from a URI) comes without them, and the refusal says so."""
    import onnx
    from onnx import numpy_helper

    def save_split(model: Any, folder: Path) -> Path:
        folder.mkdir()
        onnx.save(
            model,
            str(folder / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx.data",
            size_threshold=0,
        )
        assert (folder / "model.onnx.data").is_file()
        return folder / "model.onnx"

    model = _stand_in_model()
    onnx.save(model, str(tmp_path / "one.onnx"))
    split_path = save_split(model, tmp_path / "exported")
    split = open_session(str(split_path), threads=1, use_gpu=False, store=None, uri_from=None)
    whole = U2NetSession(tmp_path / "one.onnx", threads=1, use_gpu=False)
    image = photos(1, size_px=96)
    assert np.array_equal(split.predict(image)[0].mask, whole.predict(image)[0].mask)

    other = _stand_in_model()
    weights = other.graph.initializer[0]
    weights.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weights), weights.name))
    retrained = U2NetSession(save_split(other, tmp_path / "retrained"), threads=1, use_gpu=False)
    assert retrained.model_id != split.model_id  # same graph file bytes, other weights

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        (snapshot / name).symlink_to(tmp_path / "exported" / name)
    linked = U2NetSession(snapshot / "model.onnx", threads=1, use_gpu=False)
    assert linked.model_id == split.model_id

    with pytest.raises(MattingModelError, match=r"separate files, ONNX external data"):
        U2NetSession(split_path.read_bytes(), threads=1, use_gpu=False)


def test_a_relative_official_model_path_is_the_working_directorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was joined under shared/matting/models/ by the registry, while `skuforge matting official`
    wrote it in the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKUFORGE_OFFICIAL_U2NETP", "models/official.onnx")
    assert matting.REGISTRY["u2netp-official"].path() == tmp_path / "models" / "official.onnx"
    assert matting.official_onnx_path() == tmp_path / "models" / "official.onnx"


def _nan_past_four_images_model(batch: str | None) -> bytes:
    """A 1x1 convolution and a sigmoid, plus sqrt(4 - N), N the images in the call: NaN for a call of
    more than CPU_CALL_IMAGES. ``batch``: the batch dimension's name, None for a free one without one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    most = float(matting.CPU_CALL_IMAGES)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["mask"]),
            helper.make_node("Shape", ["input"], ["shape"]),
            helper.make_node("Gather", ["shape", "first"], ["count"]),
            helper.make_node("Cast", ["count"], ["images"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["most", "images"], ["room"]),
            helper.make_node("Sqrt", ["room"], ["nan_past_most"]),
            helper.make_node("Add", ["mask", "nan_past_most"], ["d0"]),
        ],
        "nan_past_four_images",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [batch, 1, 320, 320])],
        initializer=[
            numpy_helper.from_array(np.array([0.8, -0.5, 0.3], np.float32).reshape(1, 3, 1, 1), "w"),
            numpy_helper.from_array(np.array([0], np.int64), "first"),
            numpy_helper.from_array(np.array([most], np.float32), "most"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("batch", ["batch", None])
def test_on_the_cpu_a_call_takes_at_most_cpu_call_images_whatever_the_batch_is_named(
    batch: str | None,
) -> None:
    """On the CPU provider a chunk is run as calls of at most CPU_CALL_IMAGES images (the setting's
    help: "on CPU, calls of at most 4"): a call of 8 held 1.5 GB of activations. A model whose free
    batch dimension has no name (None in ORT's shape) got the whole chunk in one call, up to
    SKUFORGE_MATTING_MAX_BATCH (256) images."""
    session = U2NetSession(_nan_past_four_images_model(batch), threads=1, use_gpu=False, max_batch=8)
    session.warm_up()
    results = session.predict(photos(2, size_px=64) * 4)
    assert len(results) == 8
