"""Real background photos for the composite backend: the scene library (``SKUFORGE_SCENES_URI``).

A folder or object-store prefix of photos (shelves, counters, baskets, hands). Each photo is decoded
once at start-up, shrunk to ``max_side_px`` and kept in memory as uint8. A file that does not decode
(corrupt, truncated, not an image, too large) is skipped: the reason is logged and counted in
``skuforge_generator_scenes_skipped_total{reason}``; the library never fails because of one file.

A scene's *tag* is the first folder of its key (``shelves/a.jpg`` → ``shelves``; top level → no tag).
A SKU never gets a scene tagged like its series (compared case- and punctuation-blind, so series
"Fizzo Zero" matches folder ``fizzo-zero``): a library built from photos of a catalogue's other
products puts each product's own photos in a folder named like its series, so a product is never
composited onto photos of itself (which would hand the classifier extra real views of it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image
from prometheus_client import Counter

from shared.errors import BadInput, ImageRejected, TransientError
from shared.images import decode_image
from shared.store import ObjectStore

log = logging.getLogger(__name__)

SCENE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SCENES_SKIPPED = Counter(
    "skuforge_generator_scenes_skipped_total",
    "Scene-library files skipped at load (not decodable or unreadable), by reason",
    ["reason"],
)


@dataclass(frozen=True)
class Scene:
    """One background photo."""

    key: str  # its key under the library's prefix
    tag: str  # first folder of the key; "" at top level
    pixels: npt.NDArray[np.uint8]  # H x W x 3 RGB, longer side <= the library's max_side_px


class SceneLibrary:
    """Background photos by key; ``choose`` draws one for a SKU, never one tagged like its series."""

    def __init__(self, scenes: list[Scene], skipped: dict[str, str] | None = None) -> None:
        if not scenes:
            raise ValueError("a scene library needs at least one usable photo")
        self._by_key = {scene.key: scene for scene in sorted(scenes, key=lambda scene: scene.key)}
        self.skipped = dict(skipped or {})

    @classmethod
    def load(cls, store: ObjectStore, *, max_side_px: int = 512) -> SceneLibrary:
        """Every photo under ``store`` (by suffix); undecodable files are skipped with a logged reason."""
        scenes: list[Scene] = []
        skipped: dict[str, str] = {}
        for key in sorted(store.list_keys()):
            if not key.lower().endswith(SCENE_SUFFIXES):
                continue
            try:
                image = decode_image(store.get_bytes(key))
            except ImageRejected as exc:
                skipped[key] = exc.reason
            except TransientError as exc:
                # The store is down, not the file: fail start-up rather than silently lose scenes.
                raise TransientError(f"scene library {store.base_uri} unreadable at {key}: {exc}") from exc
            except (BadInput, OSError) as exc:
                skipped[key] = f"unreadable: {type(exc).__name__}"
            else:
                image.thumbnail((max_side_px, max_side_px), Image.Resampling.LANCZOS)
                tag = series_tag(key.split("/", 1)[0]) if "/" in key else ""
                scenes.append(Scene(key, tag, np.asarray(image, dtype=np.uint8)))
                continue
            reason = skipped[key]
            SCENES_SKIPPED.labels(reason=reason.split(":", 1)[0]).inc()
            log.warning("scene %s skipped: %s", store.uri_for(key), reason)
        if not scenes:
            raise ValueError(
                f"no usable scene photo under {store.base_uri} ({len(skipped)} skipped); "
                f"put {', '.join(SCENE_SUFFIXES)} files there or unset SKUFORGE_SCENES_URI"
            )
        log.info("scene library: %d photos from %s, %d skipped", len(scenes), store.base_uri, len(skipped))
        return cls(scenes, skipped)

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, key: str) -> Scene:
        """The scene stored under ``key``; ``KeyError`` names a few known keys."""
        try:
            return self._by_key[key]
        except KeyError:
            known = ", ".join(list(self._by_key)[:3])
            raise KeyError(f"no scene {key!r} in the library (e.g. {known})") from None

    def keys_for(self, series: str | None) -> list[str]:
        """Keys a SKU of ``series`` may use, in key order: all, minus those tagged like the series."""
        own = series_tag(series) if series else None
        return [key for key, scene in self._by_key.items() if not own or scene.tag != own]


def series_tag(name: str) -> str:
    """``name`` lower-cased with runs of anything but letters and digits as one '-'."""
    return re.sub(r"[^0-9a-z]+", "-", name.lower()).strip("-")
