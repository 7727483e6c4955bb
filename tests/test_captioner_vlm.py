"""The BLIP backend end to end with a tiny randomly initialised model: S3 download, load, caption a SKU.

The model is built from a config in the test (hidden size 32, one layer), so its sentences mean
nothing and are not asserted; what is checked is that the weights come from the configured
directory or URI only, that every usable photo's caption carries the measured attributes plus the
model's sentence, and that the same SKU gives the same event twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.events import SkuCaptioned
from schemas.topics import SKU_CAPTIONED
from services.captioner.config import CaptionerSettings
from services.captioner.stage import handle, open_models
from shared.captioning.prompts import compose_caption
from shared.captioning.vlm import VlmModelError, fetch_model_dir, open_vlm
from shared.config import ConfigError, load_settings
from shared.store import FileStore, ObjectStore
from shared.synth import make_product, render_photo
from tests.support.bus import ingested_envelope
from tests.support.captioning import committed_matting_model, context, synthetic_sku, tiny_blip_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_blip_dir(tmp_path_factory.mktemp("blip") / "blip-tiny")


def upload_dir(store: ObjectStore, directory: Path, prefix: str) -> str:
    """Copy a local directory into the store under ``prefix``; returns the directory's URI."""
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        store.put_bytes(f"{prefix}/{path.relative_to(directory).as_posix()}", path.read_bytes())
    return store.uri_for(prefix)


def test_vlm_backend_captions_a_sku_from_a_model_on_s3(
    blip_dir: Path, s3_store: ObjectStore, s3_endpoint: str, tmp_path: Path
) -> None:
    model_uri = upload_dir(s3_store, blip_dir, "models/blip-tiny")
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri, s3_endpoint_url=s3_endpoint)
    options = load_settings(
        CaptionerSettings,
        captioner_backend="vlm",
        captioner_vlm_model=model_uri,
        captioner_vlm_cache_dir=str(tmp_path / "cache"),
        captioner_vlm_max_new_tokens=6,
        captioner_matting_model=str(committed_matting_model()),
        captioner_use_gpu=False,
    )
    models = open_models(options, settings, store)
    assert models.vlm is not None
    assert models.captioner_id.startswith("vlm:blip:blip-tiny@sha256:")

    payload = synthetic_sku(store, 4, seed=2026, photos=2)
    event = ingested_envelope(payload)
    ctx = context(store, settings)
    (emit,) = handle(event, ctx, models=models)
    assert emit.topic == SKU_CAPTIONED
    captioned = emit.payload
    assert isinstance(captioned, SkuCaptioned)
    usable = [photo for photo in captioned.photos if photo.usable]
    assert usable, [photo.unusable_reason for photo in captioned.photos]
    for photo in usable:
        measured = compose_caption(captioned.sku, photo.colours, photo.shape, photo.view)
        assert photo.caption.startswith(measured)
        assert photo.mask is not None and store.read_verified(photo.mask)
    # Greedy decoding and deterministic measurements: the same SKU, the same event.
    (again,) = handle(event, ctx, models=models)
    assert again.payload == captioned


def test_model_directory_is_fetched_once_and_reused(blip_dir: Path, tmp_path: Path) -> None:
    source = FileStore(tmp_path / "models")
    uri = upload_dir(source, blip_dir, "blip-tiny")
    first = fetch_model_dir(uri, tmp_path / "cache", uri_from="the test")
    assert sorted(p.name for p in first.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in blip_dir.iterdir()
    )
    marker_time = (first / ".skuforge-complete.json").stat().st_mtime_ns
    assert fetch_model_dir(uri, tmp_path / "cache", uri_from="the test") == first
    assert (first / ".skuforge-complete.json").stat().st_mtime_ns == marker_time
    captioner = open_vlm(
        str(first), cache_dir=None, threads=1, use_gpu=False, max_new_tokens=4, uri_from=None
    )
    photo = render_photo(make_product(0, seed=2026), 0, seed=2026, size_px=96).image
    sentences = captioner.describe([photo, photo.rotate(90)])
    assert len(sentences) == 2 and all(isinstance(s, str) for s in sentences)
    assert captioner.describe([photo, photo.rotate(90)]) == sentences


def test_nothing_is_downloaded_for_a_hub_name_or_an_empty_uri(tmp_path: Path) -> None:
    with pytest.raises(VlmModelError, match="no BLIP model at"):
        open_vlm(
            "Salesforce/blip-image-captioning-base",
            cache_dir=tmp_path,
            threads=1,
            use_gpu=False,
            uri_from=None,
        )
    with pytest.raises(VlmModelError, match="nothing is stored under"):
        fetch_model_dir((tmp_path / "nothing-here").as_uri(), tmp_path / "cache", uri_from="the test")
    with pytest.raises(ConfigError, match="SKUFORGE_CAPTIONER_VLM_MODEL"):
        load_settings(CaptionerSettings, captioner_backend="vlm")


def test_a_damaged_or_foreign_model_folder_and_a_too_long_sentence_are_refused_at_start_up(
    blip_dir: Path, tmp_path: Path
) -> None:
    # A torn safetensors file (SafetensorError) and a non-BLIP config (RuntimeError from a shape
    # mismatch) were tracebacks out of `skuforge run captioner`; a prompt plus sentence longer than
    # the text model's positions passed start-up and then dead-lettered every SKU as handler_error.
    import json
    import shutil

    torn = shutil.copytree(blip_dir, tmp_path / "torn")
    weights = next(torn.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(VlmModelError, match="cannot load BLIP"):
        open_vlm(str(torn), cache_dir=None, threads=1, use_gpu=False, uri_from=None)
    foreign = shutil.copytree(blip_dir, tmp_path / "foreign")
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(VlmModelError, match="bert model, not BLIP"):
        open_vlm(str(foreign), cache_dir=None, threads=1, use_gpu=False, uri_from=None)
    positions = json.loads((blip_dir / "config.json").read_text())["text_config"]["max_position_embeddings"]
    with pytest.raises(VlmModelError, match=f"exceed the {positions} text positions"):
        open_vlm(
            str(blip_dir), cache_dir=None, threads=1, use_gpu=False, max_new_tokens=positions, uri_from=None
        )
    assert open_vlm(
        str(blip_dir), cache_dir=None, threads=1, use_gpu=False, max_new_tokens=positions // 2, uri_from=None
    )


@pytest.mark.parametrize(
    ("asked", "key", "value"),
    [
        ({"do_sample": True}, "do_sample", "true"),
        ({"do_sample": True, "num_return_sequences": 3}, "do_sample", "true"),
        ({"num_return_sequences": 3}, "num_return_sequences", "3"),
    ],
)
def test_sampling_or_several_sentences_in_the_generation_config_are_refused_at_start_up(
    blip_dir: Path, tmp_path: Path, asked: dict[str, object], key: str, value: str
) -> None:
    # The captioner decodes greedily, one sentence per photo: a generation_config.json asking for
    # sampling (and several sentences) was overruled without a word, and one asking for several
    # sentences alone failed in transformers' own words, naming neither the file nor the key.
    import json
    import shutil

    model = shutil.copytree(blip_dir, tmp_path / "sampling")
    generation = model / "generation_config.json"
    generation.write_text(json.dumps({**json.loads(generation.read_text()), **asked}))
    with pytest.raises(VlmModelError) as refused:
        open_vlm(str(model), cache_dir=None, threads=1, use_gpu=False, uri_from=None)
    assert str(refused.value) == (
        f"{generation}: {key} is {value}; the captioner writes one deterministic sentence per photo "
        "(no sampling), so set it to "
        f"{'false' if key == 'do_sample' else '1'} or remove it"
    )


def test_the_beams_the_generation_config_asks_for_are_searched(blip_dir: Path, tmp_path: Path) -> None:
    # A beam search is as deterministic as greedy decoding, but the captioner decoded with one beam
    # whatever the folder's generation_config.json said (and transformers' BLIP reads none of it).
    import json
    import shutil

    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    beams = shutil.copytree(blip_dir, tmp_path / "beams")
    generation = beams / "generation_config.json"
    generation.write_text(json.dumps({**json.loads(generation.read_text()), "num_beams": 4}))
    photos = [Image.new("RGB", (32, 32), (200, 30, 30))]

    def sentences(model: Path) -> list[str]:
        vlm = open_vlm(
            str(model), cache_dir=None, threads=1, use_gpu=False, uri_from=None, prompt=" ", max_new_tokens=8
        )
        return vlm.describe(photos)

    greedy, searched = sentences(blip_dir), sentences(beams)

    processor = BlipProcessor.from_pretrained(blip_dir)
    model = BlipForConditionalGeneration.from_pretrained(blip_dir).eval()
    ids = model.generate(**processor(images=photos, return_tensors="pt"), max_new_tokens=8, num_beams=4)
    assert searched == processor.batch_decode(ids, skip_special_tokens=True) != greedy


@pytest.mark.parametrize("beams", [0, "4", True, 2.5])
def test_a_generation_config_asking_for_no_whole_number_of_beams_is_refused_at_start_up(
    blip_dir: Path, tmp_path: Path, beams: object
) -> None:
    import json
    import shutil

    model = shutil.copytree(blip_dir, tmp_path / "beams")
    generation = model / "generation_config.json"
    generation.write_text(json.dumps({**json.loads(generation.read_text()), "num_beams": beams}))
    with pytest.raises(VlmModelError) as refused:
        open_vlm(str(model), cache_dir=None, threads=1, use_gpu=False, uri_from=None)
    assert str(refused.value) == (
        f"{generation}: num_beams is {json.dumps(beams)}; set it to a whole number from 1 or remove it"
    )


def test_a_vlm_cache_that_cannot_be_written_is_a_start_up_error_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The matting model's cache says so; the BLIP folder's was an OSError traceback out of
    # `skuforge run captioner` (exit 1), naming neither the folder's setting nor what to do.
    from skuforge_cli.main import main as cli_main

    model = tmp_path / "models" / "blip"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "blip"}')
    (tmp_path / "a-file").write_text("not a folder")
    for name, value in {
        "SKUFORGE_STORE_URI": (tmp_path / "store").as_uri(),
        "SKUFORGE_METRICS_PORT": "0",
        "SKUFORGE_CAPTIONER_USE_GPU": "false",
        "SKUFORGE_CAPTIONER_BACKEND": "vlm",
        "SKUFORGE_CAPTIONER_VLM_MODEL": model.as_uri(),
        "SKUFORGE_CAPTIONER_VLM_CACHE_DIR": str(tmp_path / "a-file" / "cache"),
    }.items():
        monkeypatch.setenv(name, value)

    assert cli_main(["run", "captioner"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "SKUFORGE_CAPTIONER_VLM_CACHE_DIR" in err and str(tmp_path / "a-file" / "cache") in err


def test_the_prompt_is_taken_off_the_sentence_only_as_whole_words(blip_dir: Path) -> None:
    # The prompt "a photo" cut "a photograph of a can" to "graph of a can"; the echo of "a photo" goes.
    captioner = open_vlm(
        str(blip_dir),
        cache_dir=None,
        threads=1,
        use_gpu=False,
        prompt="a photo",
        max_new_tokens=4,
        uri_from=None,
    )
    decoded = ["a photograph of a red can", "a photo of a red can", "a photos of cans"]
    captioner.processor.batch_decode = lambda ids, skip_special_tokens: decoded
    photo = render_photo(make_product(0, seed=2026), 0, seed=2026, size_px=96).image
    assert captioner.describe([photo] * 3) == [
        "a photograph of a red can",
        "of a red can",
        "a photos of cans",
    ]


def test_a_prompt_with_punctuation_is_taken_off_as_blip_spaces_it(blip_dir: Path) -> None:
    # BLIP's BertTokenizer decodes punctuation as words of its own ("close-up" comes back "close - up",
    # "can's" "can ' s", and "photo," "photo ," in some transformers versions): the echo was kept.
    captioner = open_vlm(
        str(blip_dir),
        cache_dir=None,
        threads=1,
        use_gpu=False,
        prompt="a close-up photo, of",
        max_new_tokens=4,
        uri_from=None,
    )
    decoded = ["a close - up photo , of a red can", "a close - up photo, of a can", "a close - upper can"]
    captioner.processor.batch_decode = lambda ids, skip_special_tokens: decoded
    photo = render_photo(make_product(0, seed=2026), 0, seed=2026, size_px=96).image
    assert captioner.describe([photo] * 3) == ["a red can", "a can", "a close - upper can"]


def test_blip_settings_under_the_attributes_backend_are_refused_naming_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # They were read by nothing: an operator who set the BLIP model but not the backend got
    # attribute-only captions, with no word that the model was never loaded.
    monkeypatch.setenv("SKUFORGE_CAPTIONER_VLM_MODEL", "s3://models/blip-base")
    with pytest.raises(
        ConfigError, match="SKUFORGE_CAPTIONER_VLM_MODEL set but SKUFORGE_CAPTIONER_BACKEND is attributes"
    ):
        load_settings(CaptionerSettings)
    with pytest.raises(
        ConfigError, match="VLM_MAX_NEW_TOKENS, SKUFORGE_CAPTIONER_VLM_MODEL, SKUFORGE_CAPTIONER_VLM_PROMPT"
    ):
        load_settings(CaptionerSettings, captioner_vlm_prompt="a picture of", captioner_vlm_max_new_tokens=9)
    assert (
        load_settings(CaptionerSettings, captioner_backend="vlm").captioner_vlm_model
        == "s3://models/blip-base"
    )
    monkeypatch.delenv("SKUFORGE_CAPTIONER_VLM_MODEL")
    assert load_settings(CaptionerSettings).captioner_backend == "attributes"
    # The cache folder is a place, not a choice of captions: set for every stage alike, no contradiction.
    monkeypatch.setenv("SKUFORGE_CAPTIONER_VLM_CACHE_DIR", "/var/cache/skuforge-models")
    assert load_settings(CaptionerSettings).captioner_backend == "attributes"


def test_an_accented_prompt_is_taken_off_as_blip_spells_it(blip_dir: Path) -> None:
    # BLIP's uncased BertTokenizer lowercases and strips accents, so "une photo de crème fraîche" came
    # back "une photo de creme fraiche ...": the prompt did not match, and the echo stayed in the caption.
    prompt = "Une photo de crème fraîche, Smørrebrød"
    captioner = open_vlm(
        str(blip_dir),
        cache_dir=None,
        threads=1,
        use_gpu=False,
        prompt=prompt,
        max_new_tokens=4,
        uri_from=None,
    )
    tokenizer = captioner.processor.tokenizer.backend_tokenizer  # its words, as decode spaces them
    words = tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(prompt))
    echoed = " ".join(word for word, _ in words)
    assert echoed == "une photo de creme fraiche , smørrebrød"
    decoded = [f"{echoed} dans un pot", f"{prompt} in a jar", f"{echoed}ene on a plate"]
    captioner.processor.batch_decode = lambda ids, skip_special_tokens: decoded
    photo = render_photo(make_product(0, seed=2026), 0, seed=2026, size_px=96).image
    assert captioner.describe([photo] * 3) == ["dans un pot", "in a jar", decoded[2]]
