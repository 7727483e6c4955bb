"""Colour conversion: sRGB to CIE Lab (D65), where colour differences are measured.

The captioner names a product's colours in Lab and the gate measures colour drift in Lab; both
import this, not each other.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["linear_to_srgb", "srgb_to_lab", "srgb_to_linear"]

F32Array = npt.NDArray[np.float32]

_D65 = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float32,
)


def _linearise(srgb01: F32Array) -> F32Array:
    out: F32Array = np.where(srgb01 <= 0.04045, srgb01 / 12.92, ((srgb01 + 0.055) / 1.055) ** 2.4).astype(
        np.float32
    )
    return out


# uint8 pixels are linearised by table lookup: one gather instead of a power per channel.
_LINEAR_LUT: Final[F32Array] = _linearise(np.arange(256, dtype=np.float32) / 255.0)


def srgb_to_lab(rgb: npt.ArrayLike) -> F32Array:
    """sRGB (0-255, last axis 3, any leading shape; uint8 takes a fast path) to CIE Lab (D65), float32."""
    values = np.asarray(rgb)
    if values.dtype == np.uint8:
        linear = _LINEAR_LUT[values]
    else:
        linear = _linearise(np.clip(values.astype(np.float32) / 255.0, 0.0, 1.0))
    xyz = (linear @ _RGB_TO_XYZ.T) / _D65
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lab = np.stack(
        [116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1
    )
    return lab.astype(np.float32)


def srgb_to_linear(rgb: npt.ArrayLike) -> F32Array:
    """sRGB (0-255, any shape; uint8 takes the lookup table) to linear-light RGB in 0..1, float32."""
    values = np.asarray(rgb)
    if values.dtype == np.uint8:
        linear: F32Array = _LINEAR_LUT[values]
        return linear
    return _linearise(np.clip(values.astype(np.float32) / 255.0, 0.0, 1.0))


def linear_to_srgb(linear: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Linear-light RGB (clipped to 0..1) back to sRGB 0-255, rounded to uint8."""
    clipped = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    encoded = np.where(clipped <= 0.0031308, 12.92 * clipped, 1.055 * clipped ** (1.0 / 2.4) - 0.055)
    return np.round(encoded * 255.0).astype(np.uint8)
