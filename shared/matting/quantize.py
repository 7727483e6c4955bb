"""Static int8 (QDQ) quantisation of a U2-Net ONNX model, calibrated on renderer and real photos.

fp32 alone barely beats rembg on a CPU without VNNI; int8 weights and activations make the
convolutions about 1.6x cheaper. The int8 model is only accepted if its held-out mean IoU stays
within half a point of the fp32 model and no held-out photo loses more than ``IMAGE_IOU_DROP_MAX``
(``judge_int8``, checked by ``skuforge matting quantize``).

Calibration sets the activation ranges, so it must see the photos the model will meet: renderer
photos alone left real in-store photos (darker, busier) outside the calibrated ranges. Real photos
come from ``photo_folders`` (e.g. the ``images/`` of ``skuforge matting real-pairs``), taken evenly.
Ranges learnt for the weights (``shared/matting/ranges.py``) may replace the calibrated ones.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from shared.errors import BadInput
from shared.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image
from shared.matting import IMAGE_IOU_DROP_MAX, MEAN_IOU_DROP_MAX
from shared.matting.session import MattingModelError, U2NetSession, u2net_preprocess
from shared.photos import HEIC_ADVICE, HEIC_SUFFIXES, PHOTO_FILE_SUFFIXES, is_left_out_quietly, photo_suffix
from shared.synth import render_dataset

if TYPE_CHECKING:
    from shared.matting.ranges import Range


# The renderer seed of the calibration photos; tune-ranges starts from the same calibration.
CALIBRATION_SEED = 4242


@dataclass(frozen=True)
class Int8Verdict:
    """Whether an int8 model keeps its fp32 model's held-out quality, on average and photo by photo."""

    accepted: bool
    mean_iou_drop: float
    worst_iou_drop: float  # the largest loss of one photo (negative: every photo gained)
    worst_image: int  # that photo's index in the held-out set
    images_over_drop_max: int  # photos that lost more than the per-photo limit
    reason: str  # why it was refused; '' when accepted


def judge_int8(
    fp32_ious: Sequence[float],
    int8_ious: Sequence[float],
    *,
    mean_drop_max: float = MEAN_IOU_DROP_MAX,
    image_drop_max: float = IMAGE_IOU_DROP_MAX,
) -> Int8Verdict:
    """Compare the held-out IoUs of the same photos, in the same order, under fp32 and int8."""
    if len(fp32_ious) != len(int8_ious) or not fp32_ious:
        raise ValueError(
            f"need the same held-out photos under both models, got {len(fp32_ious)} and {len(int8_ious)} IoUs"
        )
    drops = np.asarray(fp32_ious, dtype=np.float64) - np.asarray(int8_ious, dtype=np.float64)
    mean_drop = float(drops.mean())
    worst = int(drops.argmax())
    over = int((drops > image_drop_max).sum())
    reasons = []
    if mean_drop > mean_drop_max:
        reasons.append(f"mean IoU fell {mean_drop:.4f} (at most {mean_drop_max:g})")
    if over:
        reasons.append(
            f"{over} of {len(drops)} photos lost more than {image_drop_max:g} IoU (worst: photo {worst}, "
            f"{fp32_ious[worst]:.3f} to {int8_ious[worst]:.3f})"
        )
    return Int8Verdict(
        accepted=not reasons,
        mean_iou_drop=round(mean_drop, 4),
        worst_iou_drop=round(float(drops[worst]), 4),
        worst_image=worst,
        images_over_drop_max=over,
        reason="; ".join(reasons),
    )


class CalibrationPhotoError(ValueError):
    """A file of ``--calibration-photos`` that does not decode; the message names it."""


class PhotoCalibration(CalibrationDataReader):
    """Feeds pre-processed photos (the inference pre-processing) to the calibrator, ``call_images`` at a
    time at ``size_px`` (a side, or the (width, height) a model fixes): the model's own input shape."""

    def __init__(
        self,
        input_name: str,
        photos: Sequence[Image.Image],
        size_px: int | tuple[int, int] = 320,
        call_images: int = 1,
    ) -> None:
        self._input_name = input_name
        calls = [list(photos[first : first + call_images]) for first in range(0, len(photos), call_images)]
        # A short last call is filled with its own first photo: a repeat moves no min or max.
        self._inputs = iter(
            [u2net_preprocess(call + call[:1] * (call_images - len(call)), size_px=size_px) for call in calls]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration input, or None when done."""
        batch = next(self._inputs, None)
        return None if batch is None else {self._input_name: batch}


def calibration_photos(
    n_renderer: int,
    seed: int,
    photo_folders: Sequence[Path],
    n_real: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Image.Image]:
    """``n_renderer`` renderer photos plus ``n_real`` photos spread evenly over ``photo_folders``.

    Only the photo files of the folders are picked, by ingest's rules (``shared.photos``: ``.jfif``,
    ``.jpe`` and a file named ``.jpg`` too, hidden files not; a ``pairs.json``, a ``.DS_Store`` or a
    masks folder beside them crashed the run after the renderer photos were made), and each is decoded
    as ingest and the stages decode it (``decode_image``: EXIF orientation, alpha over white, 16-bit
    rescaled, colour profile to sRGB): calibration must see what inference sees. A photo that does not
    decode, and a HEIC/HEIF photo (an iPhone's), which is not read, are a ``CalibrationPhotoError``
    naming them, before any rendering."""
    by_folder = {
        folder: [
            path
            for path in folder.iterdir()
            if path.is_file()
            and photo_suffix(path.name) in PHOTO_FILE_SUFFIXES
            and not is_left_out_quietly(path.name)
        ]
        for folder in photo_folders
    }
    if n_real:
        # Skipped without a word, they left the int8 model calibrated on fewer real photos than asked.
        heic = sorted(
            str(path)
            for folder in photo_folders
            for path in folder.iterdir()
            if photo_suffix(path.name) in HEIC_SUFFIXES
            and not is_left_out_quietly(path.name, is_folder=path.is_dir())
        )
        if heic:
            raise CalibrationPhotoError(f"{', '.join(heic)}: {HEIC_ADVICE}; or move them out of the folder")
        # The folder `train --extra` takes (photos under images/) gave no photo, silently: the model was
        # calibrated on renderer photos only, the failure these photos are there to prevent.
        empty = [str(folder) for folder, found in by_folder.items() if not found]
        if empty:
            raise CalibrationPhotoError(
                f"no photo directly in {', '.join(empty)} (photos in a subfolder are not read; for a "
                "`matting real-pairs` folder give its images/ folder)"
            )
    files = sorted(path for found in by_folder.values() for path in found)
    real: list[Image.Image] = []
    if files and n_real:
        picks = np.linspace(0, len(files) - 1, num=min(n_real, len(files))).round().astype(int)
        for index in sorted(set(picks.tolist())):
            try:
                real.append(
                    decode_image(files[index].read_bytes(), max_pixels=max_pixels, max_bytes=max_bytes)
                )
            except (BadInput, OSError) as exc:
                raise CalibrationPhotoError(
                    f"calibration photo {files[index]} cannot be used: {exc}"
                ) from None
    return [photo.image for photo in render_dataset(n_renderer, seed, size_px=512)] + real


# Nodes only a quantised model has (besides QLinearConv and its kind).
QUANTISED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}
)

# Per-channel weights need DequantizeLinear's axis, which opset 13 brought.
PER_CHANNEL_OPSET = 13


def _with_per_channel_opset(fp32_path: Path, scratch: Path) -> Path:
    """``fp32_path``, or a copy in ``scratch`` converted to ``PER_CHANNEL_OPSET`` when its opset is older
    (the official U2-NetP and rembg's u2net.onnx are opset 11): quantised as it was, the int8 model had
    DequantizeLinear nodes with an axis its opset lacks, and ONNX Runtime refused to load it."""
    model = onnx.load(str(fp32_path), load_external_data=False)
    opset = max((entry.version for entry in model.opset_import if entry.domain in {"", "ai.onnx"}), default=0)
    if opset >= PER_CHANNEL_OPSET:
        return fp32_path
    from onnx import version_converter

    converted = scratch / "opset.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(fp32_path)), PER_CHANNEL_OPSET), str(converted))
    return converted


def quantize_u2net(
    fp32_path: Path,
    int8_path: Path,
    *,
    calibration_images: int = 64,
    seed: int = CALIBRATION_SEED,
    photo_folders: Sequence[Path] = (),
    real_images: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    ranges: Mapping[str, Range] | None = None,
    calibrated_ranges: Mapping[str, Range] | None = None,
) -> Path:
    """Write a QDQ int8 copy of ``fp32_path`` (per-channel int8 weights, uint8 activations); the real
    calibration photos are decoded under ``max_pixels`` / ``max_bytes`` (the shared settings' limits).
    ``ranges`` (``shared/matting/ranges.py``, learnt for these weights) replace the calibrated
    activation ranges; a RangesMismatch if they do not fit the model (or, given the
    ``calibrated_ranges`` they started from, were learnt for other weights). The calibration photos are
    fed at the model's input size and batch (a file may fix either); a model that does not open, takes
    float16 or is already quantised is a ``MattingModelError`` before any photo is made."""
    # The model's input as the stage reads it: calibrated at 320 x 320, one photo a call, in float32, a
    # model exported at a fixed other size or batch failed in ONNX Runtime after the photos were made.
    model = U2NetSession(fp32_path, threads=1, use_gpu=False)
    if model.input_dtype is not np.float32:
        raise MattingModelError(
            f"{fp32_path} takes {np.dtype(model.input_dtype).name} input {model.input_name!r}; quantize "
            "takes a float32 model (int8 ranges and weights are made from float32): quantise the float32 "
            "export it was made from"
        )
    # Quantised again, an int8 model's candidate had two nodes of one name: ONNX Runtime refused it in
    # the held-out eval that followed, a traceback after the calibration.
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    if any(node.op_type in QUANTISED_OPS or node.op_type.startswith("QLinear") for node in graph.node):
        raise MattingModelError(
            f"{fp32_path} is already quantised (it has QuantizeLinear/DequantizeLinear or QLinear nodes); "
            "quantize the float32 model it was made from"
        )
    photos = calibration_photos(
        calibration_images, seed, photo_folders, real_images, max_pixels=max_pixels, max_bytes=max_bytes
    )
    with tempfile.TemporaryDirectory() as tmp:
        source = _with_per_channel_opset(fp32_path, Path(tmp))
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph folding first, as ONNX Runtime recommends before static quantisation.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        int8_path.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            PhotoCalibration(model.input_name, photos, model.input_size, model.call_images),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    if ranges is not None:
        from shared.matting.ranges import apply_ranges  # torch, only when ranges are given

        quantised = onnx.load(str(int8_path))
        apply_ranges(quantised, ranges, calibrated=calibrated_ranges)
        onnx.save(quantised, str(int8_path))
    return int8_path
