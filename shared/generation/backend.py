"""The interface every generation backend implements, and the one place that picks a backend.

A backend turns one reference photo plus its product mask into ``n`` new images. It keeps the
product's own pixels, so each sample carries an ``expected_mask``: where those pixels ended up.
The gate later compares that mask with the matting model's prediction (IoU).

Two backends exist: ``composite`` (``shared/generation/composite.py``: the cut-out pasted onto
procedural scenes; CPU-fast, no weights) and ``diffusion`` (``shared/generation/diffusion.py``:
diffusers inpainting around the placed product, with LoRA adapters). The Triton model
(``services/generator/server.py``) serves whichever ``open_backend`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from schemas.events import MAX_SEED, MIN_SEED
from shared.arith.masks import largest_component, solidity
from shared.errors import BadInput

if TYPE_CHECKING:
    from schemas.events import CaptionedPhoto
    from shared.config import Settings
    from shared.generation.diffusion import DiffusionSettings
    from shared.generation.scenes import SceneLibrary

BACKEND_NAMES = ("composite", "diffusion")
# A sample's parameters may report, under this key, the per-channel (R, G, B) gain a backend applied
# to the product's own colours on purpose (the composite backend: its match to a photo scene times the
# scene light that falls on the product). It is measured, not a knob: the generator stage moves it to
# ``ImageGenerated.colour_gain``, and the gate applies it to the reference photo before it measures
# colour drift, so a deliberate change is not flagged as drift. Whatever changes the product's mean
# colour on purpose belongs in it: an undeclared change is measured as drift.
COLOUR_GAIN_KEY = "applied_colour_gain"
# The largest output side a request may ask for (``GenerationRequest.size``): the generator's setting
# stops there, and the Triton model refuses a request beyond it before any canvas is allocated.
MAX_SIZE_PX = 2048
# A seed is what the Triton protocol carries for it, an int64 (``services/generator/protocol.py``,
# ``schemas.events.MIN_SEED``/``MAX_SEED``): negative ones included. Every backend seeds from it through
# ``seed_entropy``, one rule for all.


def seed_entropy(seed: int) -> int:
    """``seed`` (an int64) as the unsigned 64-bit number a backend seeds its generators from: the same
    bits (-1 is 2^64 - 1), so two seeds never share one. ``ValueError`` for a seed no int64 holds,
    which only a caller in Python can pass: 2^64 would have drawn seed 0's images."""
    if not MIN_SEED <= seed <= MAX_SEED:
        raise ValueError(f"seed must be from -2^63 to 2^63-1 (an int64), got {seed}")
    return seed % 2**64


def is_pile(variant_index: int, share: float, offset: float = 0.0) -> bool:
    """Whether variant ``variant_index`` of a loose-produce SKU is asked for as a pile (the composite
    backend's ``arrangement``): ``share`` of the variants, spread evenly (0.5: every second one).

    ``offset`` (0..1) shifts where a SKU's piles fall. Spread over SKUs it makes ``share`` hold over
    them: with the same offset for every SKU, a share of 0.1 with 8 variants per SKU made no pile at all.
    """
    return math.floor((variant_index + 1) * share + offset) > math.floor(variant_index * share + offset)


# The solidity (``shared.arith.masks.solidity``: pixels over those of the convex hull) at or above
# which an in-store photo's cut-out, its largest blob, is taken for one product alone. Chosen on
# GroceryStoreDataset train photos (never val/ or test/) matted by u2netp-official as the captioner
# mats them: the 108 of 125 masks the captioner takes (at least 0.5% of the photo), 44 of Granny
# Smith, 32 of red bell pepper, 32 of Tropicana cartons. One apple, one pepper or a carton held clear
# of the hand scored 0.971-1.0; heaps, crates, chains and a carton with the hand across it at most
# 0.962. The gap is narrow, and a convex thing that is no one product passes (a price tag alone 0.984,
# two cartons side by side 0.979): this only picks among a SKU's photos, and a SKU none of whose
# photos passes is cut from all of them.
ONE_OBJECT_MIN_SOLIDITY = 0.97
# ``plain_background_share`` at or above which a photo's backdrop is plain: the default of
# SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND, and where the captioner cuts a mask to its largest blob
# (``cluttered_cutout``) and fills a carton's dents. ~1 on a catalogue photo, below 0.6 in a store.
PLAIN_BACKGROUND_FROM = 0.7


def cutout_sources(usable: list[CaptionedPhoto], min_plain_background: float) -> list[CaptionedPhoto]:
    """The photos to cut the product from: those on a plain background, else all usable ones.

    On a cluttered in-store photo the matting model is often wrong about what the product is (a
    hand, the next item on the shelf); pasted onto new scenes, such a cut-out is a wrong label. The
    photo still reaches the retraining store as a real image. The generator and the LoRA trainer
    both take their cut-outs from these. Of cluttered photos both cut the largest blob
    (``cluttered_cutout``) and draw from those whose blob is one object first
    (``one_object_photos``): both need the masks, which they read and this does not.
    """
    plain = [
        photo
        for photo in usable
        if photo.plain_background is None or photo.plain_background >= min_plain_background
    ]
    return plain or usable


def cut_from_cluttered_photos(usable: list[CaptionedPhoto], min_plain_background: float) -> bool:
    """Whether :func:`cutout_sources` falls back to cluttered photos: there are usable ones, and none
    is on a plain background. The gate cannot see a wrong cut-out (its expected mask is that cut-out),
    so the generator and the demo say so."""
    return bool(usable) and all(
        photo.plain_background is not None and photo.plain_background < min_plain_background
        for photo in usable
    )


def cluttered_cutout(mask: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The mask of a product cut from a cluttered photo (0/255): its largest blob only.

    In a store the matting model's other blobs are rarely the product's: a price-tag fragment beside
    a chain of apples was pasted onto every scene, and the gate cannot flag it (its expected mask is
    this cut-out). On a plain background a second blob may be the product's own (a lid, a pack's second
    item), so the masks of those photos are left as they are.
    """
    return np.where(largest_component(mask), np.uint8(255), np.uint8(0))


class _Photo(Protocol):
    @property
    def photo_id(self) -> str: ...


_PhotoT = TypeVar("_PhotoT", bound=_Photo)


def one_object_photos(photos: Sequence[_PhotoT], masks: Mapping[str, npt.NDArray[np.uint8]]) -> list[_PhotoT]:
    """Of cluttered cut-out sources, in their order, those whose mask (by photo id: the cut-out,
    ``cluttered_cutout``) is one solid object (``ONE_OBJECT_MIN_SOLIDITY``); all of them when none is.

    A cut-out of a heap, a chain or a product with a hand across it is no one product; where the SKU
    has a photo of one product alone (a single apple, a carton held clear), only that one is drawn
    from. A photo whose mask is not in ``masks`` does not pass. The generator's photos are
    ``CaptionedPhoto``s, the LoRA trainer's its training sources: anything with a ``photo_id``.
    """
    solid = [
        photo
        for photo in photos
        if photo.photo_id in masks and solidity(masks[photo.photo_id] > 0) >= ONE_OBJECT_MIN_SOLIDITY
    ]
    return solid or list(photos)


@dataclass(frozen=True)
class GenerationRequest:
    """One reference photo to turn into ``n`` variants."""

    reference: npt.NDArray[np.uint8]  # H x W x 3 RGB reference photo
    mask: npt.NDArray[np.uint8]  # H x W, 0 background / 255 product
    prompt: str
    negative_prompt: str
    seed: int
    n: int  # number of variants
    parameters: dict[str, Any]  # variant parameters (JSON); backend-specific knobs
    adapter_id: str | None = None  # explicit LoRA adapter, or None = choose by series
    series: str | None = None  # SKU series, for the adapter choice (and never its scenes' tag)
    own_names: tuple[str, ...] = ()  # the SKU's category and product name: never its scenes' tag either
    size: int = 512  # output canvas side in px


@dataclass(frozen=True)
class GeneratedSample:
    """One generated image and where the product's own pixels are in it."""

    image: npt.NDArray[np.uint8]  # size x size x 3
    expected_mask: npt.NDArray[np.uint8]  # size x size, 0/255: where the product's own pixels are
    parameters: dict[str, Any]  # the parameters actually used (JSON-able)
    adapter_id: str | None = None


# What one request of a batch came to: its samples, or why the backend refused it.
RowOutcome = list[GeneratedSample] | ValueError | BadInput


class GenerationBackend(Protocol):
    """What the Triton model calls; one instance per server process."""

    name: str  # "composite" | "diffusion"
    model_id: str

    def generate(self, request: GenerationRequest) -> list[GeneratedSample]:
        """Return exactly ``request.n`` samples, reproducible for the same request and seed."""
        ...

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        """Serve several requests at once, one outcome each, in order; a refused request fails alone.

        A backend that can batch (diffusion: one pipeline call for many rows) does it here; the
        images are those ``generate`` gives for each request alone (up to float rounding).
        """
        ...


def generate_one_by_one(backend: GenerationBackend, requests: list[GenerationRequest]) -> list[RowOutcome]:
    """``generate_many`` for a backend with nothing to gain from batching: ``generate`` per request."""
    outcomes: list[RowOutcome] = []
    for request in requests:
        try:
            outcomes.append(backend.generate(request))
        except (ValueError, BadInput) as exc:
            outcomes.append(exc)
    return outcomes


def open_backend(
    name: str,
    *,
    diffusion: DiffusionSettings | None = None,
    shared: Settings | None = None,
    scenes: SceneLibrary | None = None,
    photo_share: float = 0.0,
) -> GenerationBackend:
    """The backend ``name`` (``SKUFORGE_GENERATION_BACKEND``), built from the settings given.

    ``composite`` takes an optional scene library and the share of variants placed on its photos;
    ``diffusion`` needs its own settings (``DiffusionSettings``) and the shared ones (the object
    store). It is imported lazily: torch and diffusers load only where it runs.
    """
    if name == "composite":
        from shared.generation.composite import CompositeBackend

        return CompositeBackend(scenes, photo_share)
    if name == "diffusion":
        from shared.generation.diffusion import DiffusionBackend

        if diffusion is None or shared is None:
            raise ValueError("the diffusion backend is built from DiffusionSettings and the shared Settings")
        backend: GenerationBackend = DiffusionBackend.from_settings(diffusion, shared)
        return backend
    raise ValueError(
        f"unknown generation backend {name!r}: "
        f"set SKUFORGE_GENERATION_BACKEND to one of {', '.join(BACKEND_NAMES)}"
    )
