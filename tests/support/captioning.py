"""Helpers for the captioner tests: the committed matting model, synthetic SKU events, a tiny BLIP,
the matting calls a stage's metrics recorded (``matting_calls``); and ``captioned_sku``, the
captioner's output as the generator and LoRA trainer tests take it in.

The captioner's tests that look at masks use the committed U2-NetP: a random-weight model's masks
decide nothing (on a flat photo it lights up almost the whole frame, or a quarter of it, by chance),
so tests of usable / unusable photos would be testing noise. When the file is missing they fail,
saying so, instead of skipping: a skipped accuracy test reads like a passing one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from schemas.common import SkuMetadata
from schemas.events import CaptionedPhoto, ReferencePhoto, SkuCaptioned, SkuIngested
from shared.config import Settings
from shared.matting import MODELS_DIR
from shared.matting.session import REGISTRY, MattingSession, open_session
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import ObjectStore
from shared.synth import blank_photo, make_product, render_photo

if TYPE_CHECKING:
    from services.captioner.stage import CaptionerModels

COMMITTED_MODEL = MODELS_DIR / str(REGISTRY["u2netp"].file_name)


def committed_matting_model() -> Path:
    """The committed U2-NetP file; fails the test (not skips) when it is not there."""
    if not COMMITTED_MODEL.is_file():
        pytest.fail(
            f"committed model missing: {COMMITTED_MODEL} does not exist; restore it with git "
            "(docs/matting.md says how it was made; the captioner's mask and accuracy tests need "
            "the real model)",
            pytrace=False,
        )
    return COMMITTED_MODEL


def committed_session(max_batch: int = 10) -> MattingSession:
    """An ONNX Runtime session on the committed U2-NetP (CPU, two threads)."""
    return open_session(
        str(committed_matting_model()),
        threads=2,
        use_gpu=False,
        store=None,
        max_batch=max_batch,
        uri_from=None,
    )


def caption(payload: SkuIngested, ctx: Context) -> SkuCaptioned:
    """What the captioner (the committed U2-NetP, no VLM) emits for the ingested SKU."""
    from schemas.events import SkuCaptioned
    from services.captioner.config import CaptionerSettings
    from services.captioner.stage import CaptionerModels, handle
    from shared.config import load_settings
    from tests.support.bus import ingested_envelope

    event = ingested_envelope(payload)
    models = CaptionerModels(
        session=committed_session(),
        vlm=None,
        options=load_settings(CaptionerSettings, captioner_use_gpu=False),
    )
    [emit] = handle(event, ctx, models=models)
    assert isinstance(emit.payload, SkuCaptioned)
    return emit.payload


def random_models(onnx: Path) -> CaptionerModels:
    """Captioner models around a random-weight U2-NetP (``random_u2netp_onnx``), no VLM, default
    options: for tests that count or refuse matting calls rather than read masks."""
    from services.captioner.config import CaptionerSettings
    from services.captioner.stage import CaptionerModels
    from shared.config import load_settings
    from shared.matting.session import U2NetPSession

    session = U2NetPSession(onnx, threads=1, use_gpu=False)
    return CaptionerModels(session=session, vlm=None, options=load_settings(CaptionerSettings))


def nan_where_red_models() -> CaptionerModels:
    """Captioner models around a matting model that gives NaN for a photo with much red in it
    (``nan_where_red_onnx_bytes``; it mats its blank warm-up image and ``green_product``)."""
    from services.captioner.config import CaptionerSettings
    from services.captioner.stage import CaptionerModels
    from shared.config import load_settings
    from shared.matting.session import U2NetPSession
    from tests.support.matting import nan_where_red_onnx_bytes

    session = U2NetPSession(nan_where_red_onnx_bytes(), threads=1, use_gpu=False)
    session.warm_up()
    return CaptionerModels(
        session=session, vlm=None, options=load_settings(CaptionerSettings, captioner_use_gpu=False)
    )


def green_product() -> Image.Image:
    """A photo ``nan_where_red_models`` mats: green, its left half with some red (under half the
    brightest value); its mask is the right half."""
    image = Image.new("RGB", (128, 96), (0, 200, 0))
    image.paste((80, 200, 0), (0, 0, 64, 96))
    return image


def blue_box_on_white() -> Image.Image:
    """A product photo on a white backdrop: not blank, but its backdrop's red makes
    ``nan_where_red_models`` give NaN for it."""
    image = Image.new("RGB", (128, 96), "white")
    image.paste((20, 40, 200), (32, 16, 96, 80))
    return image


def stored_photos(store: ObjectStore, sku_id: str, photos: dict[str, Image.Image]) -> list[ReferencePhoto]:
    """``photos`` (by photo id) stored where ingest puts them, as an ``sku.ingested`` event names them."""
    return [
        ReferencePhoto(
            photo_id=photo_id,
            image=store.put_image(f"incoming/{sku_id}/{photo_id}.png", image),
            original_filename=f"{photo_id}.png",
        )
        for photo_id, image in photos.items()
    ]


def photos_sku(store: ObjectStore, sku_id: str, photos: dict[str, Image.Image]) -> SkuIngested:
    """An ``sku.ingested`` payload of a soda can with ``photos`` (by photo id), stored."""
    return SkuIngested(
        sku=SkuMetadata(sku_id=sku_id, name="Fizz", category="soda can", brand="Acme"),
        photos=stored_photos(store, sku_id, photos),
    )


def context(store: ObjectStore, settings: Settings) -> Context:
    """A handler context without Kafka, for calling a stage's ``handle`` directly."""
    return Context(
        stage="captioner",
        store=store,
        settings=settings,
        metrics=StageMetrics("captioner-test"),
        log=logging.getLogger("skuforge.captioner.test"),
    )


def synthetic_sku(
    store: ObjectStore, sku_index: int, seed: int, *, photos: int = 2, size_px: int = 192
) -> SkuIngested:
    """An ``sku.ingested`` payload for renderer product ``sku_index`` of catalogue ``seed``, photos stored."""
    spec = make_product(sku_index, seed)
    references = []
    for photo_index in range(photos):
        image = render_photo(spec, photo_index, seed, size_px).image
        photo_id = f"photo-{photo_index + 1}"
        ref = store.put_image(f"incoming/{spec.sku_id}/{photo_id}.png", image)
        references.append(ReferencePhoto(photo_id=photo_id, image=ref, original_filename=f"{photo_id}.png"))
    return SkuIngested(sku=SkuMetadata(**spec.metadata()), photos=references)


def blank_sku(store: ObjectStore, sku_id: str, colours: tuple[str, ...] = ("white", "grey")) -> SkuIngested:
    """An ``sku.ingested`` payload whose photos are flat colours: nothing to caption."""
    references = []
    for index, colour in enumerate(colours):
        ref = store.put_image(f"incoming/{sku_id}/blank-{index}.png", blank_photo(160, colour))
        references.append(
            ReferencePhoto(photo_id=f"blank-{index}", image=ref, original_filename=f"{colour}.png")
        )
    return SkuIngested(
        sku=SkuMetadata(sku_id=sku_id, name="Nothing", category="soda can", brand="Nobody"), photos=references
    )


def captioned_sku(
    store: ObjectStore,
    index: int,
    *,
    usable_photos: int = 2,
    unusable_photos: int = 0,
    series: str | None = None,
) -> SkuCaptioned:
    """A captioned SKU whose photos and masks are rendered products stored in ``store``."""
    spec = make_product(index, seed=21)
    photos = []
    for photo_index in range(usable_photos + unusable_photos):
        photo = render_photo(spec, photo_index, seed=21, size_px=192)
        image = store.put_image(f"images/{spec.sku_id}/real/p{photo_index}.png", photo.image)
        usable = photo_index < usable_photos
        mask = (
            store.put_image(f"masks/reference/{spec.sku_id}/p{photo_index}.png", photo.mask)
            if usable
            else None
        )
        photos.append(
            CaptionedPhoto(
                photo_id=f"p{photo_index}",
                image=image,
                mask=mask,
                usable=usable,
                unusable_reason=None if usable else "blank_photo",
                caption=f"a {spec.main_colour} {spec.shape}" if usable else "",
            )
        )
    return SkuCaptioned(
        sku=SkuMetadata(
            sku_id=spec.sku_id,
            name=spec.name,
            category=spec.category,
            series=spec.series if series is None else series,
        ),
        photos=photos,
        instance_token="sks",
        class_noun=spec.shape,
        instance_prompt=f"a photo of sks {spec.shape}",
        class_prompt=f"a photo of a {spec.shape}",
        negative_prompt="blurry",
        captioner="test",
    )


# A word-level vocabulary is enough for a tokenizer that round-trips the tiny model's output.
_VOCAB = (
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "the", "of", "photo", "picture", "on"),
    *("with", "and", "in", "red", "white", "blue", "green", "black", "can", "bottle", "box", "jar"),
    *("pouch", "shelf", "table", "product", "label"),
)


def tiny_blip_dir(directory: Path) -> Path:
    """Save a randomly initialised BLIP captioner (hidden size 32, one layer, 32 px images) with its
    processor and a word-level BertTokenizer into ``directory``; nothing is downloaded."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab-source.txt"
    vocab.write_text("\n".join(_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    config = BlipConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "vocab_size": len(_VOCAB),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "encoder_hidden_size": 32,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "sep_token_id": 3,
        },
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    vocab.unlink()
    return directory


def matting_calls(metrics: StageMetrics) -> float:
    """How many matting model calls the stage's metrics recorded."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "skuforge_model_batch_size"
        for sample in family.samples
        if sample.name.endswith("_count") and sample.labels.get("model") == "matting"
    )


# ``fit_shape``'s options for the smallest fit that still writes a module: 8 products, no held-out ones or
# cartons, masks from the renderer's truth.
TINY_FIT_SHAPE = [
    "--products",
    "8",
    "--eval-products",
    "0",
    "--cartons",
    "0",
    "--mask-source",
    "truth",
    "--min-leaf",
    "1",
]
