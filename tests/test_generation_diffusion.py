"""Backend ``diffusion`` and the LoRA registry, on a tiny inpainting pipeline built from config.

What a user would notice: the product's own pixels survive generation exactly where the expected
mask says; a seed reproduces an image; the SKU's series picks its adapter (else the general one,
else none) and the adapter changes the image; loading many adapters never keeps more than the LRU
size in the pipeline; a model published to S3 generates the same images as the local folder.
"""

from __future__ import annotations

import errno
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bench.tiny_diffusion import (
    TINY_BASE_MODEL,
    build_tiny_sdxl_inpaint_pipeline,
    make_tiny_lora,
    model_files,
    product_photo,
)
from shared import model_cache
from shared.config import ConfigError, load_settings
from shared.errors import BadInput
from shared.generation.adapters import (
    NO_ADAPTER,
    AdapterKind,
    AdapterMetadata,
    AdapterRegistry,
    resolve_adapter,
)
from shared.generation.backend import GeneratedSample, GenerationRequest
from shared.generation.diffusion import (
    CANVAS_FILL,
    DiffusionBackend,
    DiffusionModelError,
    DiffusionSettings,
    paint_mask,
    place_product,
    variant_seeds,
)
from shared.store import FileStore, ObjectStore, open_store

SIZE = 64


@pytest.fixture(scope="module")
def lora_files(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four different tiny adapters (seeds 1..4)."""
    base = tmp_path_factory.mktemp("lora")
    return [make_tiny_lora(tiny_model, base / f"lora{seed}", seed=seed) for seed in range(1, 5)]


@pytest.fixture
def diffusion_env(monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path) -> Path:
    """Environment of a CPU backend on the tiny model; returns the store root (registry under adapters/)."""
    store_root = tmp_path / "store"
    for name, value in {
        "SKUFORGE_DIFFUSION_MODEL": str(tiny_model),
        "SKUFORGE_DIFFUSION_DEVICE": "cpu",
        # One thread: on the shared 2-core machine two torch threads spin against the neighbours.
        "SKUFORGE_DIFFUSION_THREADS": "1",
        "SKUFORGE_DIFFUSION_STEPS": "2",
        "SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S": "0",
        "SKUFORGE_DIFFUSION_CACHE_DIR": str(tmp_path / "cache"),
        "SKUFORGE_STORE_URI": f"file://{store_root}",
    }.items():
        monkeypatch.setenv(name, value)
    return store_root


def _request(seed: int = 7, n: int = 2, **overrides: object) -> GenerationRequest:
    photo, mask = product_photo()
    fields: dict[str, object] = {
        "reference": photo,
        "mask": mask,
        "prompt": "a red can on a shelf",
        "negative_prompt": "blurry",
        "seed": seed,
        "n": n,
        "parameters": {},
        "size": SIZE,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def _images(samples: list[GeneratedSample]) -> npt.NDArray[np.uint8]:
    return np.stack([sample.image for sample in samples])


# --- placement (pure, fast) -------------------------------------------------------------------


def test_placement_puts_the_product_where_the_mask_says() -> None:
    photo, mask = product_photo(seed=3)
    placed = place_product(photo, mask, 128, scale=0.5, rotation_deg=0.0, position_x=0.0, position_y=1.0)
    assert placed.canvas.shape == (128, 128, 3) and placed.expected_mask.shape == (128, 128)
    assert set(np.unique(placed.expected_mask)) == {0, 255}
    ys, xs = np.nonzero(placed.expected_mask)
    # The disc's diameter is 0.6 of the 96 px photo; at scale 0.5 it spans half the 128 px canvas.
    assert abs((xs.max() - xs.min() + 1) - 64) <= 2 and abs((ys.max() - ys.min() + 1) - 64) <= 2
    assert xs.min() <= 1 and ys.max() >= 126  # position (0, 1): bottom-left corner
    # Inside the mask the canvas carries the product's texture, not the photo's flat background.
    inside = placed.canvas[placed.expected_mask == 255]
    assert inside.std() > 40


@pytest.mark.parametrize(
    ("width", "height", "rotation_deg", "position_x", "position_y", "scale"),
    [
        (80, 20, 30.0, 1.0, 1.0, 0.9),
        (80, 20, -30.0, 0.0, 0.0, 0.9),
        (60, 40, 45.0, 0.5, 1.0, 1.0),  # turned, its box is wider than the canvas: it is shrunk
    ],
)
def test_rotated_placement_stays_inside_the_canvas(
    width: int, height: int, rotation_deg: float, position_x: float, position_y: float, scale: float
) -> None:
    """A rectangular product, turned and pushed against the canvas's edges: every one of its pixels
    is on the canvas. A disc turned is the same disc, and mask indices are always on the canvas, so
    the count is what tells: a turned corner left off the canvas is missing from ``expected_mask``."""
    photo = np.full((96, 96, 3), (200, 190, 170), np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    mask[48 - height // 2 : 48 + height // 2, 48 - width // 2 : 48 + width // 2] = 255
    photo[mask == 255] = np.random.default_rng(4).integers(0, 256, (width * height, 3), dtype=np.uint8)
    placed = place_product(
        photo, mask, 128, scale=scale, rotation_deg=rotation_deg, position_x=position_x, position_y=position_y
    )
    zoom = placed.scale * 128 / max(width, height)
    kept = np.count_nonzero(placed.expected_mask) / (width * height * zoom**2)
    assert abs(kept - 1) < 0.01  # the rest: thresholding the resampled edge
    # It lies against the edges asked for (so a product that overran them would have lost pixels).
    ys, xs = np.nonzero(placed.expected_mask)
    for position, low, high in ((position_x, xs.min(), xs.max()), (position_y, ys.min(), ys.max())):
        assert position != 0.0 or low <= 1
        assert position != 1.0 or high >= 126


def test_paint_mask_spares_a_band_around_the_product() -> None:
    expected = np.zeros((32, 32), np.uint8)
    expected[10:20, 10:20] = 255
    painted = paint_mask(expected, dilation_px=3)
    assert (painted[expected == 255] == 0).all()
    assert painted[7, 15] == 0 and painted[6, 15] == 255  # 3 px kept above the product, not 4
    assert (paint_mask(expected, 0) == 255 - expected).all()


def test_the_kept_band_around_a_tightly_framed_product_is_repainted_where_the_photo_ends() -> None:
    """A product 2 px from its photo's top and bottom: the band kept around it (8 px at 1024 px) ran
    past the photo's edge, and that part of the band stayed CANVAS_FILL grey in every output."""
    photo = np.full((100, 160, 3), 30, np.uint8)
    mask = np.zeros((100, 160), np.uint8)
    mask[2:98, 40:120] = 255
    photo[mask == 255] = (200, 40, 40)
    placed = place_product(photo, mask, 256, scale=0.9, rotation_deg=10.0, position_x=0.5, position_y=0.5)
    assert placed.photo_area is not None
    grey = (placed.canvas == CANVAS_FILL).all(axis=2)
    assert grey.any() and not (grey & (placed.photo_area == 255)).any()
    old = paint_mask(placed.expected_mask, dilation_px=8)
    new = paint_mask(placed.expected_mask, dilation_px=8, photo_area=placed.photo_area)
    assert (grey & (old == 0)).sum() > 50  # the grey rim the painter kept before
    assert not (grey & (new == 0)).any()
    assert (new[placed.expected_mask == 255] == 0).all()  # the product itself is never repainted
    # Where the photo goes on around the product, the band is kept as before.
    assert ((old == 0) & (placed.photo_area == 255)).sum() == ((new == 0) & (placed.photo_area == 255)).sum()


def test_empty_mask_is_refused_with_a_reason() -> None:
    photo, _ = product_photo()
    with pytest.raises(BadInput) as caught:
        place_product(
            photo,
            np.zeros(photo.shape[:2], np.uint8),
            64,
            scale=0.5,
            rotation_deg=0,
            position_x=0.5,
            position_y=0.5,
        )
    assert caught.value.reason == "empty_mask"


def test_variant_seeds_differ_across_variants_and_requests() -> None:
    assert variant_seeds(5, 1) == variant_seeds(5, 1)
    assert len({variant_seeds(5, 1), variant_seeds(6, 0), variant_seeds(5, 0)}) == 3


# --- adapter registry (no torch) --------------------------------------------------------------


def _meta(
    adapter_id: str, kind: AdapterKind, series: str | None = None, *, age_s: int = 0, base: str = "sd"
) -> AdapterMetadata:
    return AdapterMetadata(
        adapter_id=adapter_id,
        kind=kind,
        series=series,
        base_model=base,
        rank=4,
        weights_sha256="0" * 64,
        weights_bytes=1,
        created_at=datetime(2026, 1, 1, tzinfo=UTC) - timedelta(seconds=age_s),
    )


def test_resolve_prefers_series_then_general_then_none() -> None:
    adapters = [
        _meta("general-old", "general", age_s=100),
        _meta("general-new", "general"),
        _meta("cola-v1", "specialized", "Cola 330ml", age_s=50),
        _meta("cola-v2", "specialized", "cola 330ML"),
        _meta("chips-xl", "specialized", "chips", base="sdxl"),
    ]
    assert resolve_adapter(adapters, series="COLA 330ml").adapter_id == "cola-v2"
    assert resolve_adapter(adapters, series="COLA 330ml").reason == "series"
    assert resolve_adapter(adapters, series="water").adapter_id == "general-new"
    # An adapter for another base model is never chosen automatically.
    choice = resolve_adapter(adapters, series="chips", base_model="sd")
    assert (choice.adapter_id, choice.reason) == ("general-new", "general")
    assert resolve_adapter(adapters[2:4], series="water").reason == "none"
    assert (
        resolve_adapter(adapters, series="cola 330ml", adapter_id="general-old").adapter_id == "general-old"
    )
    assert resolve_adapter(adapters, series="cola 330ml", adapter_id=NO_ADAPTER).adapter is None
    with pytest.raises(BadInput, match="unknown_adapter"):
        resolve_adapter(adapters, series=None, adapter_id="nope")
    with pytest.raises(BadInput, match="adapter_base_mismatch"):
        resolve_adapter(adapters, series=None, adapter_id="chips-xl", base_model="sd")


def test_registry_refuses_inconsistent_metadata_and_skips_broken_entries(tmp_path: Path) -> None:
    from safetensors.numpy import save

    registry = AdapterRegistry(FileStore(tmp_path))
    weights = save({"unet.attn.to_q.lora.down.weight": np.zeros((4, 8), np.float32)})
    with pytest.raises(ValueError, match="needs the series"):
        registry.register("cola", weights, kind="specialized", base_model="sd", rank=4)
    with pytest.raises(BadInput, match="invalid_adapter_id"):
        registry.register("bad.id", weights, kind="general", base_model="sd", rank=4)
    for rank in (None, 4):  # a given rank no longer skips reading the file
        with pytest.raises(ValueError, match="not a safetensors file"):
            registry.register("general", b"x" * 16, kind="general", base_model="sd", rank=rank)
    assert registry.list() == []  # nothing half-written is listed
    registry.register("general", weights, kind="general", base_model="sd", rank=4)
    registry.store.put_bytes("broken/metadata.json", b"{not json")
    assert [a.adapter_id for a in registry.list()] == ["general"]


# --- the backend on the tiny pipeline ---------------------------------------------------------


def backend_from_env() -> DiffusionBackend:
    """The backend of the SKUFORGE_* variables the test set, as ``skuforge serve generator`` builds it."""
    return DiffusionBackend.from_settings(load_settings(DiffusionSettings), load_settings())


@pytest.mark.slow
def test_generation_keeps_the_product_pixels_and_is_reproducible(diffusion_env: Path) -> None:
    backend = backend_from_env()
    samples = backend.generate(_request(seed=7, n=3))
    assert len(samples) == 3
    photo, mask = product_photo()
    for sample in samples:
        assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
        assert sample.expected_mask.shape == (SIZE, SIZE)
        p = sample.parameters
        placed = place_product(
            photo, mask, SIZE, scale=p["scale"], rotation_deg=p["rotation_deg"],
            position_x=p["position_x"], position_y=p["position_y"],
        )  # fmt: skip
        assert np.array_equal(sample.expected_mask, placed.expected_mask)
        inside = placed.expected_mask == 255
        assert inside.sum() > 100
        assert np.array_equal(sample.image[inside], placed.canvas[inside])
        # Outside the product the painter drew something new, not the grey canvas fill.
        assert not np.array_equal(sample.image[~inside], placed.canvas[~inside])
        assert p["adapter_choice"] == "none" and sample.adapter_id is None and p["product_pixels_exact"]
    # Variants differ from each other; the same seed gives the same pixels, another seed others.
    assert not np.array_equal(samples[0].image, samples[1].image)
    again = backend.generate(_request(seed=7, n=3))
    assert np.array_equal(_images(samples), _images(again))
    other = backend.generate(_request(seed=8, n=3))
    assert not np.array_equal(_images(samples), _images(other))
    # Batching does not change a variant: the first of three equals a request for one.
    single = backend.generate(_request(seed=7, n=1))
    assert np.allclose(single[0].image.astype(int), samples[0].image.astype(int), atol=2)


@pytest.mark.slow
def test_harmonisation_is_recorded_and_changes_the_product(diffusion_env: Path) -> None:
    backend = backend_from_env()
    plain = backend.generate(_request(seed=3, n=1))[0]
    blended = backend.generate(_request(seed=3, n=1, parameters={"harmonize_strength": 0.3}))[0]
    assert blended.parameters["harmonize_strength"] == 0.3
    assert blended.parameters["product_pixels_exact"] is False
    assert np.array_equal(blended.expected_mask, plain.expected_mask)
    inside = plain.expected_mask == 255
    assert not np.array_equal(blended.image[inside], plain.image[inside])
    with pytest.raises(BadInput, match="invalid_parameters"):
        backend.generate(_request(parameters={"scale": 3}))


@pytest.mark.slow
def test_series_picks_the_adapter_and_the_adapter_changes_the_image(
    diffusion_env: Path, lora_files: list[Path]
) -> None:
    backend = backend_from_env()
    base = backend.generate(_request(seed=11, series="cola"))
    assert base[0].adapter_id is None and base[0].parameters["adapter_choice"] == "none"

    registry = AdapterRegistry(FileStore(diffusion_env / "adapters"))
    general = registry.register(
        "shelf-general",
        lora_files[0],
        kind="general",
        base_model=TINY_BASE_MODEL,
        training_prompts=["a shelf"],
    )
    assert general.rank == 4  # read from the weights
    registry.register(
        "cola-lora", lora_files[1], kind="specialized", series="Cola", base_model=TINY_BASE_MODEL
    )

    cola = backend.generate(_request(seed=11, series="cola"))
    assert [s.adapter_id for s in cola] == ["cola-lora", "cola-lora"]
    assert cola[0].parameters["adapter_choice"] == "series"
    assert cola[0].parameters["adapter_kind"] == "specialized"
    assert not np.array_equal(_images(cola), _images(base))
    # The adapter repaints the background only: the product is still exact.
    inside = base[0].expected_mask == 255
    assert np.array_equal(cola[0].image[inside], base[0].image[inside])

    chips = backend.generate(_request(seed=11, series="chips"))
    assert chips[0].adapter_id == "shelf-general" and chips[0].parameters["adapter_choice"] == "general"
    assert not np.array_equal(_images(chips), _images(cola))

    # Asking for no adapter restores the base model's output exactly.
    plain = backend.generate(_request(seed=11, series="cola", adapter_id=NO_ADAPTER))
    assert plain[0].adapter_id is None
    assert np.array_equal(_images(plain), _images(base))
    explicit = backend.generate(_request(seed=11, series="chips", adapter_id="cola-lora"))
    assert np.array_equal(_images(explicit), _images(cola))
    with pytest.raises(BadInput, match="unknown_adapter"):
        backend.generate(_request(adapter_id="missing"))

    # An adapter that does not fit the model is refused with a reason and leaves nothing behind.
    from safetensors.numpy import save

    layer = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    misfit = save(
        {
            f"{layer}.lora.down.weight": np.ones((4, 999), np.float32),
            f"{layer}.lora.up.weight": np.ones((64, 4), np.float32),
        }
    )
    registry.register("misfit", misfit, kind="specialized", series="misfit", base_model=TINY_BASE_MODEL)
    with pytest.raises(BadInput, match="adapter_unloadable"):
        backend.generate(_request(seed=11, series="misfit"))
    assert "misfit" not in backend.pipe.get_list_adapters().get("unet", [])
    assert np.array_equal(_images(backend.generate(_request(seed=11, series="cola"))), _images(cola))


@pytest.mark.slow
def test_lru_keeps_at_most_k_adapters_and_deletes_the_evicted(
    diffusion_env: Path, lora_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKUFORGE_DIFFUSION_LORA_CACHE_SIZE", "2")
    backend = backend_from_env()
    registry = AdapterRegistry(FileStore(diffusion_env / "adapters"))
    series = [f"s{i}" for i in range(len(lora_files))]
    for name, weights in zip(series, lora_files, strict=True):
        registry.register(
            f"lora-{name}", weights, kind="specialized", series=name, base_model=TINY_BASE_MODEL
        )

    first = {}
    for name in series:  # K + 2 = 4 adapters through a cache of 2
        first[name] = backend.generate(_request(seed=5, n=1, series=name))[0]
        assert first[name].adapter_id == f"lora-{name}"
        in_pipe = backend.pipe.get_list_adapters()
        assert len(in_pipe.get("unet", [])) <= 2
    assert backend.pipe.get_list_adapters()["unet"] == ["lora-s2", "lora-s3"]
    assert list(backend.lora.evicted) == ["lora-s0", "lora-s1"]
    # No LoRA layer of an evicted adapter is left behind in the UNet.
    layer_names = {name for name, _ in backend.pipe.unet.named_parameters()}
    assert not any("lora-s0" in name or "lora-s1" in name for name in layer_names)
    assert any("lora-s3" in name for name in layer_names)
    # An evicted adapter comes back on demand and paints what it painted before.
    again = backend.generate(_request(seed=5, n=1, series="s0"))[0]
    assert np.array_equal(again.image, first["s0"].image)
    assert backend.pipe.get_list_adapters()["unet"] == ["lora-s3", "lora-s0"]


@pytest.mark.slow
def test_an_sdxl_folder_runs_the_sdxl_pipeline_with_its_adapter(
    diffusion_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_tiny_sdxl_inpaint_pipeline(tmp_path / "tiny-sdxl-inpaint")
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", str(model))  # architecture 'auto': from model_index.json
    backend = backend_from_env()
    assert type(backend.pipe).__name__ == "StableDiffusionXLInpaintPipeline"
    base = backend.generate(_request(seed=4, series="cola"))
    placed = base[0].expected_mask == 255
    assert np.array_equal(backend.generate(_request(seed=4, series="cola"))[0].image, base[0].image)

    weights = make_tiny_lora(model, tmp_path / "xl-lora", seed=9)
    AdapterRegistry(FileStore(diffusion_env / "adapters")).register(
        "xl-cola", weights, kind="specialized", series="cola", base_model="tiny-sdxl"
    )
    adapted = backend.generate(_request(seed=4, series="cola"))
    assert adapted[0].adapter_id == "xl-cola"
    assert not np.array_equal(adapted[0].image, base[0].image)
    assert np.array_equal(adapted[0].image[placed], base[0].image[placed])


def _upload(store: ObjectStore, prefix: str, directory: Path) -> None:
    for key, data in model_files(directory).items():
        store.put_bytes(f"{prefix}/{key}", data)


@pytest.mark.slow
def test_model_and_adapters_from_s3_generate_like_the_local_folder(
    diffusion_env: Path,
    tiny_model: Path,
    lora_files: list[Path],
    s3_store: ObjectStore,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    local_registry = AdapterRegistry(FileStore(diffusion_env / "adapters"))
    local_registry.register("general", lora_files[2], kind="general", base_model=TINY_BASE_MODEL)
    local = backend_from_env().generate(_request(seed=21))

    _upload(s3_store, "models/tiny-sd-inpaint", tiny_model)
    # The registry's default root: <SKUFORGE_STORE_URI>/adapters.
    AdapterRegistry(
        open_store(f"{s3_store.base_uri}/adapters", s3_endpoint_url=s3_endpoint, uri_from="the test")
    ).register("general", lora_files[2], kind="general", base_model=TINY_BASE_MODEL)
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", f"{s3_store.base_uri}/models/tiny-sd-inpaint")
    monkeypatch.setenv("SKUFORGE_STORE_URI", s3_store.base_uri)
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("SKUFORGE_DIFFUSION_CACHE_DIR", str(tmp_path / "s3-cache"))
    backend = backend_from_env()
    remote = backend.generate(_request(seed=21))
    assert [s.adapter_id for s in remote] == ["general", "general"]
    assert np.array_equal(_images(remote), _images(local))
    assert backend.model_id.startswith("diffusion:tiny-sd-inpaint@sha256:")
    # The copy is reused: a second backend downloads nothing new.
    cached = sorted(p.name for p in (tmp_path / "s3-cache").iterdir())
    backend_from_env()
    assert sorted(p.name for p in (tmp_path / "s3-cache").iterdir()) == cached


# --- configuration ----------------------------------------------------------------------------


def test_missing_model_and_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKUFORGE_DIFFUSION_MODEL", raising=False)
    with pytest.raises(ConfigError, match="SKUFORGE_DIFFUSION_MODEL"):
        backend_from_env()
    # The backend is built from the settings it is given, whatever the environment says.
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", "/models/from-the-environment")
    with pytest.raises(ConfigError, match="SKUFORGE_DIFFUSION_MODEL"):
        DiffusionBackend.from_settings(DiffusionSettings(diffusion_model=None), load_settings())
    monkeypatch.setenv("SKUFORGE_DIFFUSION_STEPS", "0")
    with pytest.raises(ConfigError, match="SKUFORGE_DIFFUSION_STEPS"):
        load_settings(DiffusionSettings)
    with pytest.raises(ConfigError, match="SKUFORGE_DIFFUSION_SCALE_MIN"):
        load_settings(DiffusionSettings, diffusion_steps=2, diffusion_scale_min=0.9, diffusion_scale_max=0.5)


@pytest.mark.parametrize("uri", ["ftp://models.example/adapters", "s3://x/adapters"])
def test_an_adapter_registry_uri_no_store_opens_is_refused_at_start_up_naming_the_setting(
    diffusion_env: Path, uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheme no store serves, or an S3 bucket name too short, loaded the whole pipeline and then ended
    the generator's start-up in a ValueError traceback; the LoRA trainer refused it with a line."""
    monkeypatch.setenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", uri)
    with pytest.raises(ConfigError, match=r"SKUFORGE_DIFFUSION_ADAPTERS_URI: .*" + re.escape(repr(uri))):
        backend_from_env()
    # Compose and Helm pass an unset variable as an empty one: the default registry, not a refusal.
    monkeypatch.setenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", "")
    assert (
        load_settings(DiffusionSettings).adapters_uri(load_settings()) == f"file://{diffusion_env}/adapters"
    )


def test_adapters_cli_registers_and_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.numpy import save

    from skuforge_cli.main import main as cli_main

    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(save({"unet.attn.to_q.lora.down.weight": np.zeros((8, 32), np.float32)}))
    argv = ["adapters", "register", "cola-v1", str(weights), "--kind", "specialized", "--series", "cola"]
    assert cli_main([*argv, "--base-model", "sd15-inpaint", "--prompt", "a shs can"]) == 0
    capsys.readouterr()
    assert cli_main(["adapters", "list"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    listed = AdapterMetadata.model_validate_json(line)
    assert (listed.adapter_id, listed.series, listed.rank) == ("cola-v1", "cola", 8)
    assert listed.training_prompts == ["a shs can"]
    assert (tmp_path / "store" / "adapters" / "cola-v1" / listed.weight_name).is_file()
    # A specialised adapter without its series is refused, with the reason, and nothing is written.
    assert (
        cli_main(["adapters", "register", "x", str(weights), "--kind", "specialized", "--base-model", "m"])
        == 2
    )
    assert "needs the series" in capsys.readouterr().err
    assert not (tmp_path / "store" / "adapters" / "x").exists()
    # --rank skipped reading the weights: a text file registered, and was refused for every SKU later.
    general = ["--kind", "general", "--base-model", "m"]
    text = tmp_path / "notes.txt"
    text.write_text("not LoRA weights\n")
    assert cli_main(["adapters", "register", "y", str(text), *general, "--rank", "4"]) == 2
    assert "not a safetensors file" in capsys.readouterr().err
    assert cli_main(["adapters", "register", "y", str(weights), *general, "--rank", "4"]) == 2
    assert "rank 4 was given, but the weights' rank is 8" in capsys.readouterr().err
    assert not (tmp_path / "store" / "adapters" / "y").exists()
    assert cli_main(["adapters", "register", "y", str(weights), *general, "--rank", "8"]) == 0


def test_a_model_that_is_not_there_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_store: ObjectStore, s3_endpoint: str
) -> None:
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", str(tmp_path / "no-model"))
    with pytest.raises(DiffusionModelError, match=r"no diffusers pipeline at .*model_index\.json"):
        backend_from_env()
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", f"{s3_store.base_uri}/models/missing")
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("SKUFORGE_DIFFUSION_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DiffusionModelError, match="nothing is stored under"):
        backend_from_env()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES], ids=errno.errorcode.__getitem__)
def test_a_model_the_cache_cannot_hold_is_one_line_naming_the_cache_setting(
    code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full, read-only or foreign cache volume met while copying the model at start-up was an OSError
    that no handler caught: the generator died in a traceback, not the line naming the setting."""

    def refused(path: Path, blocks: object) -> tuple[int, str]:
        raise OSError(code, os.strerror(code))  # as os.write says it: no file name

    published = tmp_path / "published" / "tiny-sd-inpaint"
    published.mkdir(parents=True)
    (published / "model_index.json").write_text('{"_class_name": "StableDiffusionInpaintPipeline"}')
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", f"file://{published}")
    monkeypatch.setenv("SKUFORGE_DIFFUSION_DEVICE", "cpu")
    monkeypatch.setenv("SKUFORGE_DIFFUSION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(model_cache, "_write_durably", refused)
    with pytest.raises(DiffusionModelError, match="SKUFORGE_DIFFUSION_CACHE_DIR") as refusal:
        backend_from_env()
    assert str(tmp_path / "cache") in str(refusal.value) and os.strerror(code) in str(refusal.value)
    assert "\n" not in str(refusal.value)


# Batched rows may differ from single rows by float rounding in batched kernels (BLAS blocking);
# on the tiny pipeline, CPU, float32 the largest difference seen was 1 level (8 rows, seeds 30..37).
BATCH_TOLERANCE_LEVELS = 2  # uint8 levels, per pixel and channel


@pytest.mark.slow
def test_batched_rows_paint_what_single_rows_paint_and_adapters_split_calls(
    diffusion_env: Path, lora_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MAX_BATCH", "8")
    backend = backend_from_env()
    registry = AdapterRegistry(FileStore(diffusion_env / "adapters"))
    registry.register(
        "lora-cola", lora_files[0], kind="specialized", series="cola", base_model=TINY_BASE_MODEL
    )
    _, mask = product_photo()
    requests = [
        _request(seed=20 + i, n=1, prompt=f"a can number {i}", series="cola" if i in (2, 5) else None)
        for i in range(6)
    ]
    requests.insert(3, _request(seed=1, n=1, mask=np.zeros_like(mask)))  # refused: empty mask
    batched = backend.generate_many(requests)
    assert isinstance(batched[3], BadInput) and batched[3].reason == "empty_mask"
    served = [outcome for outcome in batched if not isinstance(outcome, Exception)]
    assert len(served) == 6
    # Four base-model rows in one call, the two adapter rows in another.
    assert backend.rows_per_call_max == 4
    rows = {s[0].parameters["pipeline_batch_rows"] for s in served}
    assert rows == {4, 2}
    single = [backend.generate(r) if k != 3 else None for k, r in enumerate(requests)]
    for outcome, alone in zip(batched, single, strict=True):
        if alone is None:
            continue
        assert isinstance(outcome, list)
        assert outcome[0].adapter_id == alone[0].adapter_id
        assert alone[0].parameters["pipeline_batch_rows"] == 1
        difference = np.abs(outcome[0].image.astype(int) - alone[0].image.astype(int)).max()
        assert difference <= BATCH_TOLERANCE_LEVELS, difference
    # Different seeds in one call still give different images (each row has its own generator).
    images = [s[0].image.tobytes() for s in served]
    assert len(set(images)) == 6


# --- GPU-path settings, checked on CPU ----------------------------------------------------------


@pytest.mark.slow
def test_the_pipeline_loads_in_the_dtype_asked_for(
    diffusion_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dtype keyword diffusers does not know is ignored with a warning and leaves float32 weights."""
    import torch

    monkeypatch.setenv("SKUFORGE_DIFFUSION_DTYPE", "bfloat16")  # float16 needs CUDA; bfloat16 runs on CPU
    half = backend_from_env()
    assert half.pipe.unet.dtype == torch.bfloat16
    assert half.pipe.vae.dtype == torch.bfloat16 and half.pipe.text_encoder.dtype == torch.bfloat16
    sample = half.generate(_request(seed=7, n=1))[0]
    assert sample.image.shape == (SIZE, SIZE, 3)
    monkeypatch.setenv("SKUFORGE_DIFFUSION_DTYPE", "auto")  # CPU: float32
    assert backend_from_env().pipe.unet.dtype == torch.float32
    monkeypatch.setenv("SKUFORGE_DIFFUSION_DTYPE", "float16")
    with pytest.raises(ConfigError, match="needs CUDA"):
        backend_from_env()


@pytest.mark.slow
def test_attention_slicing_is_a_setting_and_keeps_the_image(
    diffusion_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers.models.attention_processor import SlicedAttnProcessor

    plain = backend_from_env()
    assert not any(isinstance(p, SlicedAttnProcessor) for p in plain.pipe.unet.attn_processors.values())
    monkeypatch.setenv("SKUFORGE_DIFFUSION_ATTENTION_SLICING", "max")
    sliced = backend_from_env()
    assert all(isinstance(p, SlicedAttnProcessor) for p in sliced.pipe.unet.attn_processors.values())
    expected = plain.generate(_request(seed=9, n=1))[0].image.astype(int)
    difference = np.abs(sliced.generate(_request(seed=9, n=1))[0].image.astype(int) - expected).max()
    assert difference <= BATCH_TOLERANCE_LEVELS, difference


def test_offload_without_cuda_is_refused_at_start_up(
    diffusion_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKUFORGE_DIFFUSION_OFFLOAD", "model")
    with pytest.raises(ConfigError, match="SKUFORGE_DIFFUSION_OFFLOAD=model"):
        backend_from_env()
    monkeypatch.setenv("SKUFORGE_DIFFUSION_OFFLOAD", "everything")
    with pytest.raises(ConfigError, match="SKUFORGE_DIFFUSION_OFFLOAD"):
        load_settings(DiffusionSettings)


def test_a_device_setting_is_refused_before_the_model_is_fetched(
    diffusion_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a model URI was fetched first (gigabytes from S3, again at every restart of a pod with
    no persistent cache), and only then was the device setting refused."""
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", f"file://{tmp_path / 'not-fetched-yet'}")
    monkeypatch.setenv("SKUFORGE_DIFFUSION_OFFLOAD", "model")
    with pytest.raises(ConfigError, match="SKUFORGE_DIFFUSION_OFFLOAD=model") as refused:
        backend_from_env()
    assert "cannot fetch" not in str(refused.value)


# --- found in review: the GPU paths, shown on CPU -----------------------------------------------


@pytest.mark.slow
def test_running_out_of_memory_while_loading_an_adapter_is_not_the_adapters_fault(
    diffusion_env: Path, lora_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, any RuntimeError while loading was `adapter_unloadable`: a GPU short of memory for a
    # moment dead-lettered good requests as if their adapter did not fit the model.
    import torch

    backend = backend_from_env()
    registry = AdapterRegistry(FileStore(diffusion_env / "adapters"))
    registry.register(
        "cola-lora", lora_files[0], kind="specialized", series="cola", base_model=TINY_BASE_MODEL
    )
    load = backend.pipe.load_lora_weights

    def short_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(backend.pipe, "load_lora_weights", short_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        backend.generate(_request(seed=11, series="cola"))
    assert backend.lora.loaded == []
    monkeypatch.setattr(backend.pipe, "load_lora_weights", load)  # the memory is back: it loads
    assert backend.generate(_request(seed=11, series="cola"))[0].adapter_id == "cola-lora"


@pytest.mark.slow
def test_a_failed_adapter_load_puts_the_offload_hooks_back(
    diffusion_env: Path, lora_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # diffusers removes the offload hooks to load a LoRA and re-applies them only on success: before,
    # after a misfit adapter the pipeline ran without them and the next request failed. Offload
    # needs CUDA, so here the backend is told it offloads and the re-application is recorded.
    from safetensors.numpy import save

    backend = backend_from_env()
    backend.lora.offload = "model"
    applied: list[object] = []
    monkeypatch.setattr(backend.pipe, "enable_model_cpu_offload", lambda device=None: applied.append(device))
    layer = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    misfit = save(
        {
            f"{layer}.lora.down.weight": np.ones((4, 999), np.float32),
            f"{layer}.lora.up.weight": np.ones((64, 4), np.float32),
        }
    )
    registry = AdapterRegistry(FileStore(diffusion_env / "adapters"))
    registry.register("misfit", misfit, kind="specialized", series="misfit", base_model=TINY_BASE_MODEL)
    with pytest.raises(BadInput, match="adapter_unloadable"):
        backend.generate(_request(seed=11, series="misfit"))
    assert applied == [backend.device]


def _overflowing_vae(monkeypatch: pytest.MonkeyPatch, backend: DiffusionBackend, *, rows: list[int]) -> None:
    """Make the VAE decode NaN into ``rows`` whenever it is not in float32 (or always, if it is)."""
    import torch

    vae = backend.pipe.vae
    decode = vae.decode
    always = vae.dtype == torch.float32

    def overflowing(latents: torch.Tensor, *args: object, **kwargs: object) -> object:
        decoded = decode(latents, *args, **kwargs)
        if always or vae.dtype != torch.float32:
            decoded[0][rows] = float("nan")
        return decoded

    monkeypatch.setattr(vae, "decode", overflowing)


@pytest.mark.slow
def test_a_row_the_vae_decodes_to_nan_is_decoded_again_in_float32(
    diffusion_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, NaN pixels became 0: a black background, the product pasted back exactly, and the
    # gate accepted it. A float16 VAE overflows; bfloat16 (which runs on a CPU) stands in for it.
    import torch

    monkeypatch.setenv("SKUFORGE_DIFFUSION_DTYPE", "bfloat16")
    backend = backend_from_env()
    expected = backend.generate(_request(seed=7, n=2))
    _overflowing_vae(monkeypatch, backend, rows=[0])
    samples = backend.generate(_request(seed=7, n=2))
    assert backend.pipe.vae.dtype == torch.bfloat16  # put back after the float32 decode
    outside = samples[0].expected_mask == 0
    assert samples[0].image[outside].mean() > 20  # not black
    difference = np.abs(samples[0].image.astype(int) - expected[0].image.astype(int))
    assert difference.max() <= 16, difference.max()  # float32 decoding of the same latents
    assert np.array_equal(samples[1].image, expected[1].image)  # the finite row is not touched


@pytest.mark.slow
def test_pixels_that_stay_nan_are_never_emitted(diffusion_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.generation.diffusion import NonFiniteOutput

    backend = backend_from_env()  # float32: nothing to upcast
    _overflowing_vae(monkeypatch, backend, rows=[1])
    with pytest.raises(NonFiniteOutput, match="1 of 2 row"):
        backend.generate(_request(seed=7, n=2))
    assert not issubclass(NonFiniteOutput, BadInput)  # the backend's failure, not the request's


@pytest.mark.slow
def test_noise_is_drawn_on_the_cpu_and_the_device_and_dtype_are_recorded(diffusion_env: Path) -> None:
    # A CUDA generator draws other noise than a CPU one for one seed: the recorded seed reproduced an
    # image only on the kind of device that painted it, and the parameters did not say which.
    backend = backend_from_env()
    pipe = backend.pipe
    devices: list[str] = []

    class Recording:
        def __getattr__(self, name: str) -> object:
            return getattr(pipe, name)

        def __call__(self, **call: object) -> object:
            devices.extend(generator.device.type for generator in call["generator"])  # type: ignore[attr-defined]
            return pipe(**call)

    backend.pipe = Recording()
    sample = backend.generate(_request(seed=3, n=2, parameters={"harmonize_strength": 0.3}))[0]
    assert devices == ["cpu"] * 4  # painting and harmonising, two rows each
    assert sample.parameters["device"] == "cpu" and sample.parameters["dtype"] == "float32"
