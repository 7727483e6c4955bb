"""The generator stage on the real broker, calling the real Triton server (PyTriton, CPU).

Captioned SKUs go in; N ``image.generated`` per SKU come out, every image and expected mask is in
the store; with Triton taken down mid-run and brought back, nothing is lost and nothing doubled.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.tiny_diffusion import build_tiny_inpaint_pipeline
from devstack.demo.demo import SAMPLE_SCENES
from schemas.envelope import DeadLetter, Envelope, derive_id
from schemas.events import CaptionedPhoto, ImageGenerated, SkuCaptioned
from schemas.topics import IMAGE_GENERATED, SKU_CAPTIONED
from services.generator.stage import (
    PlannedVariant,
    build_stage,
    handle_batch,
    plan_variants,
    variant_parameters,
)
from shared.bus import make_envelope
from shared.config import ConfigError, load_settings
from shared.generation.backend import COLOUR_GAIN_KEY, GenerationRequest
from shared.generation.composite import CompositeBackend, CompositeError, product_framing
from shared.generation.diffusion import DiffusionBackend, DiffusionSettings
from shared.generation.scenes import Scene, SceneLibrary
from shared.generation.settings import GenerationSettings
from shared.images import decode_image, decode_mask
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore, ObjectStore
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    record_count,
    running,
)
from tests.support.captioning import captioned_sku
from tests.support.generation import InProcessGenerator
from tests.support.triton import TritonServerProcess, tiny_diffusion_env

VARIANTS = 3
SIZE_PX = 128


def generation_settings(triton: TritonServerProcess, **overrides: object) -> GenerationSettings:
    return load_settings(
        GenerationSettings,
        generation_triton_url=triton.grpc_url,
        generation_variants_per_sku=VARIANTS,
        generation_size_px=SIZE_PX,
        generation_triton_timeout_s=30.0,
        **overrides,
    )


def check_generated(store: ObjectStore, events: list[ImageGenerated], captioned: list[SkuCaptioned]) -> None:
    """Exactly VARIANTS events per SKU, every image and expected mask stored and matching its event."""
    assert Counter(e.sku.sku_id for e in events) == {c.sku.sku_id: VARIANTS for c in captioned}
    assert len({e.item_id for e in events}) == len(events)
    by_sku = {c.sku.sku_id: c for c in captioned}
    for event in events:
        source = by_sku[event.sku.sku_id]
        usable = [p.photo_id for p in source.photos if p.usable]
        assert event.reference_photo_id == usable[event.variant_index % len(usable)]
        image = decode_image(store.read_verified(event.image))
        mask = decode_mask(store.read_verified(event.expected_mask))
        assert image.size == (SIZE_PX, SIZE_PX) and mask.shape == (SIZE_PX, SIZE_PX)
        assert 0.01 < (mask > 0).mean() < 0.9
        assert event.image.uri.endswith(
            f"generated/{event.sku.sku_id}/{event.item_id}-{event.image.sha256[:16]}.png"
        )
        assert event.expected_mask.uri.endswith(
            f"masks/expected/{event.sku.sku_id}/{event.item_id}-{event.expected_mask.sha256[:16]}.png"
        )
        assert event.backend == "composite" and event.model_id == "composite-v1" and event.adapter_id is None
        assert event.prompt.startswith(source.instance_prompt) and event.negative_prompt == "blurry"
        assert {"scene", "rotation_deg", "occluders"} <= set(event.parameters)
        # The backend got the reference cropped to the product, and the whole photo's framing beside it.
        (photo,) = [p for p in source.photos if p.photo_id == event.reference_photo_id]
        assert photo.mask is not None
        framing = product_framing(decode_mask(store.read_verified(photo.mask)))
        assert event.parameters["reference_framing"] == pytest.approx(framing, abs=1e-6)
    assert sorted(e.variant_index for e in events) == sorted(list(range(VARIANTS)) * len(captioned))


def test_plan_spreads_variants_over_photos_and_backends() -> None:
    store_free = SkuCaptioned.model_validate(
        {
            "sku": {"sku_id": "SKU-1", "name": "n", "category": "can"},
            "photos": [
                {"photo_id": f"p{i}", "image": _ref(), "mask": _ref(), "usable": i != 1} for i in range(3)
            ],
            "instance_token": "sks",
            "class_noun": "can",
            "instance_prompt": "a photo of sks can",
            "class_prompt": "a photo of a can",
            "captioner": "test",
        }
    )
    mix = load_settings(
        GenerationSettings,
        generation_variants_per_sku=4,
        generation_backend_mix={"composite": 1, "diffusion": 1},
    )
    plan = plan_variants(store_free, mix)
    assert [p.photo.photo_id for p in plan] == ["p0", "p2", "p0", "p2"]
    assert [p.backend for p in plan] == ["composite", "composite", "diffusion", "diffusion"]
    assert plan == plan_variants(store_free, mix)  # same SKU, same seeds
    assert len({p.seed for p in plan}) == 4
    other = plan_variants(store_free, mix.model_copy(update={"generation_seed": 1}))
    assert [p.seed for p in other] != [p.seed for p in plan]


def test_the_backend_mix_holds_over_skus_whatever_the_variants_per_sku_and_the_key_order() -> None:
    # Rounded per SKU the same way for every SKU, {"composite": 3, "diffusion": 1} with 2 variants per
    # SKU gave composite 2, diffusion 0: the diffusion backend was never used, and 3 variants gave it 1/3.
    def sku(index: int) -> SkuCaptioned:
        return SkuCaptioned.model_validate(
            {
                "sku": {"sku_id": f"SKU-{index}", "name": "n", "category": "can"},
                "photos": [{"photo_id": "p0", "image": _ref(), "mask": _ref(), "usable": True}],
                "instance_token": "sks",
                "class_noun": "can",
                "instance_prompt": "a photo of sks can",
                "class_prompt": "a photo of a can",
                "captioner": "test",
            }
        )

    skus = [sku(index) for index in range(400)]
    for variants in (1, 2, 3):
        generation = load_settings(
            GenerationSettings,
            generation_variants_per_sku=variants,
            generation_backend_mix={"composite": 3, "diffusion": 1},
        )
        plans = [plan_variants(captioned, generation) for captioned in skus]
        backends = Counter(planned.backend for plan in plans for planned in plan)
        assert backends["diffusion"] / (variants * len(skus)) == pytest.approx(0.25, abs=0.05), variants
        for plan in plans:  # each SKU: its share rounded down or up, composites first
            in_plan = [planned.backend for planned in plan]
            assert in_plan == sorted(in_plan) and in_plan.count("diffusion") in (0, 1)
        assert plans == [plan_variants(captioned, generation) for captioned in skus]  # same seed, same plan
        reordered = generation.model_copy(update={"generation_backend_mix": {"diffusion": 1, "composite": 3}})
        assert [plan_variants(captioned, reordered) for captioned in skus] == plans


def test_loose_produce_is_heaped_in_the_configured_share_of_its_composites() -> None:
    def photo(shape: str) -> CaptionedPhoto:
        return CaptionedPhoto.model_validate(
            {"photo_id": "p0", "image": _ref(), "mask": _ref(), "usable": True, "shape": shape}
        )

    def arrangements(shape: str, backend: str = "composite", **settings: object) -> list[object]:
        generation = load_settings(GenerationSettings, **settings)
        return [
            variant_parameters(PlannedVariant(i, photo(shape), backend, seed=i), generation).get(
                "arrangement"
            )
            for i in range(4)
        ]

    assert arrangements("produce") == [None] * 4  # off by default (it added nothing on val)
    assert arrangements("produce", generation_pile_share=0.5) == [None, "pile", None, "pile"]
    assert arrangements("produce", generation_pile_share=1.0) == ["pile"] * 4
    assert arrangements("box", generation_pile_share=1.0) == [None] * 4
    assert arrangements("produce", backend="diffusion", generation_pile_share=1.0) == [None] * 4
    # A knob set for every variant wins.
    single = {"arrangement": "single"}
    assert arrangements("produce", generation_pile_share=1.0, generation_parameters=single) == ["single"] * 4


def test_a_pile_share_with_a_knob_a_pile_refuses_is_a_start_up_error() -> None:
    # The stage adds a pile to these knobs for loose produce, and a pile refuses a placement of its own:
    # the settings loaded, then those SKUs' pile variants were refused one SKU at a time.
    with pytest.raises(ConfigError, match=r"PILE_SHARE asks for piles.*cannot honour occluders=1"):
        load_settings(GenerationSettings, generation_pile_share=0.5, generation_parameters={"occluders": 1})
    # A pile's own values, or an arrangement chosen for every variant, are fine.
    load_settings(GenerationSettings, generation_pile_share=0.5, generation_parameters={"occluders": 0})
    single = {"arrangement": "single", "occluders": 1}
    load_settings(GenerationSettings, generation_pile_share=0.5, generation_parameters=single)


def test_shares_too_large_to_sum_are_still_a_mix() -> None:
    # Their sum overflowed to inf: every share came out 0, and every SKU failed in the stage.
    generation = load_settings(
        GenerationSettings,
        generation_variants_per_sku=4,
        generation_backend_mix={"composite": 1e308, "diffusion": 1e308},
    )
    assert generation.shares() == {"composite": 0.5, "diffusion": 0.5}
    photo = {"photo_id": "p0", "image": _ref(), "mask": _ref(), "usable": True}
    captioned = SkuCaptioned.model_validate(
        {
            "sku": {"sku_id": "SKU-1", "name": "n", "category": "can"},
            "photos": [photo],
            "instance_token": "sks",
            "class_noun": "can",
            "instance_prompt": "a photo of sks can",
            "class_prompt": "a photo of a can",
            "captioner": "test",
        }
    )
    backends = [planned.backend for planned in plan_variants(captioned, generation)]
    assert backends == ["composite", "composite", "diffusion", "diffusion"]


def test_the_pile_share_holds_over_produce_skus() -> None:
    # Piles fell on the same variant indices in every SKU: with the default 8 variants per SKU a share
    # of 0.1 made no pile at all, and 0.2 made 1 in 8.
    def produce_sku(index: int) -> SkuCaptioned:
        return SkuCaptioned.model_validate(
            {
                "sku": {"sku_id": f"SKU-{index}", "name": "n", "category": "apple"},
                "photos": [
                    {"photo_id": "p0", "image": _ref(), "mask": _ref(), "usable": True, "shape": "produce"}
                ],
                "instance_token": "sks",
                "class_noun": "apple",
                "instance_prompt": "a photo of sks apple",
                "class_prompt": "a photo of an apple",
                "captioner": "test",
            }
        )

    skus = [produce_sku(index) for index in range(400)]
    for share in (0.1, 0.2, 0.5):
        generation = load_settings(GenerationSettings, generation_pile_share=share)
        arrangements = [
            [
                variant_parameters(planned, generation).get("arrangement")
                for planned in plan_variants(sku, generation)
            ]
            for sku in skus
        ]
        piles = sum(per_sku.count("pile") for per_sku in arrangements)
        assert piles / (8 * len(skus)) == pytest.approx(share, abs=0.02), share
        # Each SKU: its share of 8 rounded down or up, the same on every run.
        assert all(
            per_sku.count("pile") in (math.floor(8 * share), math.ceil(8 * share)) for per_sku in arrangements
        )
        again = [variant_parameters(planned, generation) for planned in plan_variants(skus[0], generation)]
        assert [parameters.get("arrangement") for parameters in again] == arrangements[0]


def test_each_backend_gets_the_knobs_it_knows_and_a_knob_no_backend_knows_stops_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SKUFORGE_GENERATION_PARAMETERS went whole to every backend: with a composite + diffusion mix,
    {"steps": 30} made the composite backend refuse every request (every SKU dead-lettered), and so
    did a misspelt knob."""

    generation = load_settings(GenerationSettings, generation_parameters={"steps": 30, "occluders": 0})
    photo = CaptionedPhoto.model_validate({"photo_id": "p0", "image": _ref(), "mask": _ref(), "usable": True})
    composite = variant_parameters(PlannedVariant(0, photo, "composite", seed=0), generation)
    diffusion = variant_parameters(PlannedVariant(1, photo, "diffusion", seed=1), generation)
    assert composite == {"occluders": 0} and diffusion == {"steps": 30}
    reference = np.full((64, 64, 3), 200, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    request = GenerationRequest(reference, mask, "", "", seed=1, n=1, parameters=composite, size=64)
    assert CompositeBackend(None).generate(request)[0].parameters["occluders"] == 0
    # From another Triton client: int(inf) raised OverflowError, a backend_error retried, not a refusal.
    with pytest.raises(CompositeError, match="occluders=inf is not a int"):
        CompositeBackend(None).generate(dataclasses.replace(request, parameters={"occluders": float("inf")}))
    monkeypatch.setenv("SKUFORGE_GENERATION_PARAMETERS", '{"ocluders": 0}')
    with pytest.raises(ConfigError, match="no backend knows ocluders"):
        load_settings(GenerationSettings)


@pytest.mark.parametrize(
    ("parameters", "backend", "refusal"),
    [
        ('{"occluders": 9}', "composite", "composite backend refuses it: occluders must be between 0 and 4"),
        ('{"arrangement": "heap"}', "composite", "unknown arrangement 'heap'"),
        ('{"scale": 1.5}', "diffusion", "diffusion backend refuses it: scale"),
        ('{"rotation_deg": 60}', "diffusion", "rotation_deg: Input should be less than or equal to 45"),
        # Beyond x2 either way the gate fails every image's declared colour gain: all to the console.
        ('{"light_gain": 2.5}', "composite", "light_gain must be from 0.6 to 1.6, got 2.5"),
        ('{"light_gain": 0.6, "light_gradient": 0.8}', "composite", "light_gain 0.6 with light_gradient 0.8"),
        # Measured, not a knob: the diffusion backend echoed it into its events as a gain nobody applied.
        ('{"applied_colour_gain": [1.3, 1, 1]}', "diffusion", "applied_colour_gain is measured"),
        # Photo scenes without SKUFORGE_SCENES_URI: the settings loaded, then every variant was refused.
        ('{"scene": "photo"}', "composite", "scene 'photo' needs a scene library: set SKUFORGE_SCENES_URI"),
    ],
)
def test_a_knob_value_its_backend_refuses_is_a_start_up_error(
    monkeypatch: pytest.MonkeyPatch, parameters: str, backend: str, refusal: str
) -> None:
    """Only the names were checked: the settings loaded, then every variant of every SKU was refused
    (generation_refused), one SKU at a time."""
    monkeypatch.setenv("SKUFORGE_GENERATION_PARAMETERS", parameters)
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND", backend)
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        load_settings(GenerationSettings)


def test_a_knob_is_checked_by_the_backends_in_use_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # rotation_deg 60 is a composite's (up to 90), not a diffusion variant's (up to 45); a photo scene's
    # key is the scene library's to check, which is not open at start-up, and on a photo any
    # height_fraction in 0..1 is taken (it is reported; the framing decides).
    monkeypatch.setenv(
        "SKUFORGE_GENERATION_PARAMETERS",
        '{"rotation_deg": 60, "scene": "photo", "scene_key": "a", "height_fraction": 0.97}',
    )
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND", "composite")
    monkeypatch.setenv("SKUFORGE_SCENES_URI", "file:///srv/scenes")  # photo scenes need a library
    assert load_settings(GenerationSettings).generation_parameters["rotation_deg"] == 60
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND_MIX", '{"composite": 1, "diffusion": 1}')
    with pytest.raises(ConfigError, match="diffusion backend refuses it: rotation_deg"):
        load_settings(GenerationSettings)


def test_cut_outs_come_from_plain_background_photos_when_a_sku_has_one() -> None:
    def sku(plain: list[float | None]) -> SkuCaptioned:
        photos = [
            {"photo_id": f"p{i}", "image": _ref(), "mask": _ref(), "usable": True, "plain_background": share}
            for i, share in enumerate(plain)
        ]
        return SkuCaptioned.model_validate(
            {
                "sku": {"sku_id": "SKU-1", "name": "n", "category": "carton"},
                "photos": photos,
                "instance_token": "sks",
                "class_noun": "carton",
                "instance_prompt": "a photo of sks carton",
                "class_prompt": "a photo of a carton",
                "captioner": "test",
            }
        )

    settings = load_settings(GenerationSettings, generation_variants_per_sku=4)
    # A catalogue photo (0.98) and two in-store ones: every variant is cut from the catalogue photo.
    plan = plan_variants(sku([0.4, 0.98, 0.3]), settings)
    assert [p.photo.photo_id for p in plan] == ["p1"] * 4
    # Only in-store photos: all of them are used rather than none.
    assert [p.photo.photo_id for p in plan_variants(sku([0.4, 0.3]), settings)] == ["p0", "p1", "p0", "p1"]
    # Events of an older captioner carry no measure: those photos count as plain.
    assert [p.photo.photo_id for p in plan_variants(sku([None, 0.2]), settings)] == ["p0"] * 4
    # The threshold is a setting: at 0 every usable photo is a source.
    anywhere = settings.model_copy(update={"generation_min_plain_background": 0.0})
    assert [p.photo.photo_id for p in plan_variants(sku([0.4, 0.98]), anywhere)] == ["p0", "p1", "p0", "p1"]


def _ref() -> dict[str, object]:
    return {"uri": "file:///x.png", "sha256": "0" * 64, "bytes": 1, "width": 1, "height": 1}


def test_a_re_render_from_a_changed_scene_library_leaves_what_earlier_events_point_at(tmp_path: Path) -> None:
    # A captioned SKU is generated, then its event comes again (redelivered, replayed, a rerun) after
    # the scene library changed: the same variants now sit on other pixels. The events sent the first
    # time may still be on their way (matting, the gate, a task waiting for a person in the console,
    # whose task id is the same for both renders): the bytes they name must still be in the store.
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    ctx = Context("generator", store, settings, StageMetrics("generator"), logging.getLogger("test"))
    generation = load_settings(
        GenerationSettings, generation_variants_per_sku=VARIANTS, generation_size_px=SIZE_PX
    )
    captioned = captioned_sku(store, 7)
    event = make_envelope(
        SKU_CAPTIONED,
        captioned,
        event_id=derive_id("test", "rerender"),
        sku_id=captioned.sku.sku_id,
        trace_id="t",
        producer="test",
    )

    def render(scene_rgb: tuple[int, int, int]) -> list[ImageGenerated]:
        scenes = SceneLibrary([Scene("shelves/a.png", "shelves", np.full((96, 128, 3), scene_rgb, np.uint8))])
        generator = InProcessGenerator(CompositeBackend(scenes, 1.0))
        [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)
        assert isinstance(outputs, list)
        return [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]

    first = render((200, 60, 40))
    again = render((200, 60, 40))
    assert [(e.image, e.expected_mask) for e in again] == [(e.image, e.expected_mask) for e in first]
    changed = render((40, 60, 200))
    assert [e.item_id for e in changed] == [e.item_id for e in first]  # the same variants
    assert all(c.image.sha256 != f.image.sha256 for c, f in zip(changed, first, strict=True))
    for generated in (*first, *changed):
        assert ctx.read_image(generated.image).size == (SIZE_PX, SIZE_PX)
        assert ctx.read_mask(generated.expected_mask).shape == (SIZE_PX, SIZE_PX)


@pytest.mark.slow
def test_a_diffusion_image_records_no_composite_knob_it_did_not_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SKUFORGE_GENERATION_PARAMETERS went whole to the diffusion backend, which records the parameters
    # it was sent with those it drew: its images' events said occluders 0 and blur_px 0.5, as if used.
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    for name, value in {
        "SKUFORGE_DIFFUSION_MODEL": str(build_tiny_inpaint_pipeline(tmp_path / "tiny-sd-inpaint")),
        "SKUFORGE_DIFFUSION_DEVICE": "cpu",
        "SKUFORGE_DIFFUSION_THREADS": "1",
        "SKUFORGE_DIFFUSION_STEPS": "2",
        "SKUFORGE_DIFFUSION_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    diffusion = DiffusionBackend.from_settings(load_settings(DiffusionSettings), settings)
    ctx = Context("generator", store, settings, StageMetrics("generator"), logging.getLogger("test"))
    generation = load_settings(
        GenerationSettings,
        generation_variants_per_sku=2,
        generation_size_px=64,
        generation_backend_mix={"composite": 1, "diffusion": 1},
        generation_parameters={"occluders": 0, "blur_px": 0.5, "steps": 1},
    )
    captioned = captioned_sku(store, 5)
    event = make_envelope(
        SKU_CAPTIONED,
        captioned,
        event_id=derive_id("test", "knobs"),
        sku_id=captioned.sku.sku_id,
        trace_id="t",
        producer="test",
    )
    generator = InProcessGenerator(CompositeBackend(None), diffusion)
    [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)
    assert isinstance(outputs, list)
    by_backend = {emit.payload.backend: emit.payload.parameters for emit in outputs}  # type: ignore[attr-defined]
    assert by_backend["composite"]["occluders"] == 0 and by_backend["composite"]["blur_px"] == 0.5
    assert "steps" not in by_backend["composite"]
    assert by_backend["diffusion"]["steps"] == 1
    assert "occluders" not in by_backend["diffusion"] and "blur_px" not in by_backend["diffusion"]


@pytest.mark.kafka
@pytest.mark.slow
def test_captioned_skus_become_generated_images(
    kafka_bootstrap: str, tmp_path: Path, triton: TritonServerProcess
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_CAPTIONED, IMAGE_GENERATED)
    stage = build_stage(settings=settings, generation=generation_settings(triton))
    store = stage.store
    good = [
        captioned_sku(store, 1, usable_photos=2),
        captioned_sku(store, 2, usable_photos=1, unusable_photos=1),
    ]
    hopeless = captioned_sku(store, 3, usable_photos=0, unusable_photos=2)
    produce(settings, SKU_CAPTIONED, [good[0], hopeless, good[1]])

    with running(stage):
        records = read_topic(
            kafka_bootstrap, settings.topic_name(IMAGE_GENERATED), expect=2 * VARIANTS, timeout_s=120
        )
        letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_CAPTIONED), expect=1, timeout_s=30)
        assert stage.ready()

    envelopes = [Envelope[ImageGenerated].model_validate_json(r.value) for r in records]
    assert len(envelopes) == 2 * VARIANTS
    assert all(e.producer == "generator" for e in envelopes)
    check_generated(store, [e.payload for e in envelopes], good)
    assert [DeadLetter.model_validate_json(r.value).reason for r in letters] == ["no_usable_photo"]


@pytest.mark.kafka
@pytest.mark.slow
def test_triton_down_mid_run_loses_and_duplicates_nothing(
    kafka_bootstrap: str, tmp_path: Path, s3_store: ObjectStore, triton: TritonServerProcess
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "unused"))
    create_topics(settings, SKU_CAPTIONED, IMAGE_GENERATED)
    stage = build_stage(settings=settings, generation=generation_settings(triton), store=s3_store)
    before = [captioned_sku(s3_store, 10 + i) for i in range(2)]
    after = [captioned_sku(s3_store, 20 + i) for i in range(2)]
    topic = settings.topic_name(IMAGE_GENERATED)

    with running(stage):
        produce(settings, SKU_CAPTIONED, before)
        assert len(read_topic(kafka_bootstrap, topic, expect=2 * VARIANTS, timeout_s=120)) == 2 * VARIANTS
        triton.stop()
        try:
            produce(settings, SKU_CAPTIONED, after)
            # Triton is down: the stage backs off and retries; nothing new is produced or committed.
            records = read_topic(kafka_bootstrap, topic, expect=4 * VARIANTS, timeout_s=8)
            assert len(records) == 2 * VARIANTS
            retries = stage.metrics.retries.labels("generator", "GeneratorUnavailable")._value.get()
            assert retries >= 1
            # Ops see it as Triton being unavailable for the composite model.
            errors = stage.metrics.registry.get_sample_value(
                "skuforge_triton_errors_total",
                {"model": "skuforge_generator_composite", "kind": "unavailable"},
            )
            assert errors is not None and errors >= 1
            assert not stage.ready()
        finally:
            triton.start()
        records = read_topic(kafka_bootstrap, topic, expect=4 * VARIANTS, timeout_s=120)
        assert stage.ready()

    envelopes = [Envelope[ImageGenerated].model_validate_json(r.value) for r in records]
    assert len(envelopes) == 4 * VARIANTS  # none lost, none doubled (read_topic keeps reading past)
    assert len({e.event_id for e in envelopes}) == 4 * VARIANTS
    check_generated(s3_store, [e.payload for e in envelopes], before + after)
    # The stage has stopped: a letter it wrote is in the topic, so reading as many as there are reads it.
    dlq = settings.dlq_name(SKU_CAPTIONED)
    letters = read_topic(kafka_bootstrap, dlq, expect=record_count(kafka_bootstrap, dlq), timeout_s=30)
    assert letters == []


@pytest.mark.kafka
@pytest.mark.slow
def test_a_model_triton_does_not_serve_backs_off_as_model_missing_and_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path, triton: TritonServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # Triton is up and serves composite only; the stage asks for diffusion (a backend setting out of step
    # with what `serve generator` serves). It backed off for ever as "unavailable", the kind of Triton
    # being down, so the alert and its runbook pointed at a Triton that was up.
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_CAPTIONED, IMAGE_GENERATED)
    stage = build_stage(
        settings=settings, generation=generation_settings(triton, generation_backend="diffusion")
    )
    sku = captioned_sku(stage.store, 51)
    produce(settings, SKU_CAPTIONED, [sku])
    model = {"model": "skuforge_generator_diffusion"}
    with caplog.at_level(logging.WARNING), running(stage):
        deadline = time.monotonic() + 120  # a guard against hanging, not a measure
        while stage.metrics.retries.labels("generator", "GeneratorUnavailable")._value.get() < 2:
            assert time.monotonic() < deadline, "the stage never backed off"
            time.sleep(0.1)
        assert not stage.ready()
    missing_calls = stage.metrics.registry.get_sample_value(
        "skuforge_triton_errors_total", {**model, "kind": "model_missing"}
    )
    assert missing_calls is not None and missing_calls >= 2
    unavailable = stage.metrics.registry.get_sample_value(
        "skuforge_triton_errors_total", {**model, "kind": "unavailable"}
    )
    assert unavailable == 0
    paused = [r for r in caplog.records if r.getMessage() == "transient fault; partition paused"]
    assert paused, "no back-off was logged"
    error = getattr(paused[0], "error", "")
    assert f"Triton at {triton.grpc_url} does not serve skuforge_generator_diffusion" in error, error
    assert "not loaded on that server" in error, error
    # Counted to the topics' ends, the stage stopped: read_topic(expect=0) could end before a record came.
    assert record_count(kafka_bootstrap, settings.topic_name(IMAGE_GENERATED)) == 0
    assert record_count(kafka_bootstrap, settings.dlq_name(SKU_CAPTIONED)) == 0

    # Nothing was committed: once the stage asks for a model Triton serves, the SKU gets its images.
    fixed = build_stage(settings=settings, generation=generation_settings(triton), store=stage.store)
    with running(fixed):
        records = read_topic(
            kafka_bootstrap, settings.topic_name(IMAGE_GENERATED), expect=VARIANTS, timeout_s=120
        )
    envelopes = [Envelope[ImageGenerated].model_validate_json(r.value) for r in records]
    assert len({e.event_id for e in envelopes}) == len(envelopes) == VARIANTS
    check_generated(stage.store, [e.payload for e in envelopes], [sku])


@pytest.mark.kafka
@pytest.mark.slow
def test_backend_mix_and_the_chosen_adapter_reach_the_events(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Half the variants from the tiny diffusion model: the SKU of series 's1' gets adapter 'lora-s1'."""
    server = TritonServerProcess(
        tmp_path,
        backends=("composite", "diffusion"),
        extra_env=tiny_diffusion_env(tmp_path, adapters={"s1": 1}),
    )
    server.start()
    try:
        settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "stage-store"))
        create_topics(settings, SKU_CAPTIONED, IMAGE_GENERATED)
        generation = load_settings(
            GenerationSettings,
            generation_triton_url=server.grpc_url,
            generation_variants_per_sku=4,
            generation_size_px=64,
            generation_backend_mix={"composite": 1, "diffusion": 1},
        )
        stage = build_stage(settings=settings, generation=generation)
        skus = [captioned_sku(stage.store, 31, series="s1"), captioned_sku(stage.store, 32, series="")]
        produce(settings, SKU_CAPTIONED, skus)
        with running(stage):
            records = read_topic(
                kafka_bootstrap, settings.topic_name(IMAGE_GENERATED), expect=8, timeout_s=180
            )
    finally:
        server.stop()
    events = [Envelope[ImageGenerated].model_validate_json(r.value).payload for r in records]
    assert len(events) == 8
    seen = {(e.sku.sku_id, e.variant_index): (e.backend, e.adapter_id, e.model_id) for e in events}
    for sku, adapter in ((skus[0], "lora-s1"), (skus[1], None)):
        for index in range(4):
            backend, adapter_id, model_id = seen[(sku.sku.sku_id, index)]
            assert backend == ("composite" if index < 2 else "diffusion")
            assert adapter_id == (adapter if backend == "diffusion" else None)
            assert model_id.startswith("diffusion:") if backend == "diffusion" else model_id == "composite-v1"
    for event in events:
        mask = decode_mask(stage.store.read_verified(event.expected_mask))
        assert mask.shape == (64, 64) and (mask > 0).any()


@pytest.mark.kafka
@pytest.mark.slow
def test_photo_scene_variants_declare_the_colour_gain_of_their_scene_match(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """On the sample store photos, each event says what the scene match did to the product's colours
    (for the gate's drift check), and its parameters stay a replayable recipe without it."""
    server = TritonServerProcess(tmp_path, extra_env={"SKUFORGE_SCENES_URI": str(SAMPLE_SCENES)})
    server.start()
    try:
        settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "stage-store"))
        create_topics(settings, SKU_CAPTIONED, IMAGE_GENERATED)
        stage = build_stage(settings=settings, generation=generation_settings(server))
        produce(settings, SKU_CAPTIONED, [captioned_sku(stage.store, 41)])
        with running(stage):
            records = read_topic(
                kafka_bootstrap, settings.topic_name(IMAGE_GENERATED), expect=VARIANTS, timeout_s=120
            )
    finally:
        server.stop()
    events = [Envelope[ImageGenerated].model_validate_json(r.value).payload for r in records]
    assert len(events) == VARIANTS
    for event in events:
        assert event.parameters["scene"] == "photo" and COLOUR_GAIN_KEY not in event.parameters
        assert event.colour_gain is not None and all(0.5 < g < 2.0 for g in event.colour_gain)
    # The match moves colours (scene_match is drawn from 0.2..0.6): not every gain is exactly one.
    assert any(g != 1.0 for event in events for g in event.colour_gain or ())


@pytest.mark.kafka
@pytest.mark.slow
def test_a_stopped_generator_stage_closes_its_triton_clients_and_their_threads(
    kafka_bootstrap: str, tmp_path: Path, triton: TritonServerProcess
) -> None:
    # Before, the stage never closed the client it made: its worker threads (each holding a Triton
    # client, over HTTP also gevent's hub) lived on after the stage returned.
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_CAPTIONED, IMAGE_GENERATED)
    before = set(threading.enumerate())
    stage = build_stage(settings=settings, generation=generation_settings(triton))
    produce(settings, SKU_CAPTIONED, [captioned_sku(stage.store, 1, usable_photos=1)])
    with running(stage):
        read_topic(kafka_bootstrap, settings.topic_name(IMAGE_GENERATED), expect=VARIANTS, timeout_s=120)
        workers = [t for t in threading.enumerate() if t not in before and t.name.startswith("triton-")]
        assert workers, "the stage's Triton client called its model from worker threads"
    assert [t.name for t in workers if t.is_alive()] == []
