"""Review 47 of the edges: the bench mask scripts' dataset default, the captioner's caption cut and its
attribute caption's length, ingest's HEIC named .jpg, and the matting model's input shape at start-up."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from tests.support.matting import one_layer_onnx_bytes

MASK_SCRIPTS = ["make_catalogue_masks", "make_instore_masks"]
INSTORE_ID = json.loads(
    (Path(__file__).resolve().parents[1] / "bench/data/matting_real/instore_reserved.json").read_text()
)[0]["id"]


@pytest.mark.parametrize("name", MASK_SCRIPTS)
def test_a_mask_script_reads_the_dataset_from_skuforge_grocery_dataset(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --data defaulted to one machine's /work/data/dataset, where every other bench command reads
    # SKUFORGE_GROCERY_DATASET: a user who had set it was told photos were missing under another folder.
    monkeypatch.setitem(sys.modules, "cv2", None)  # were the photos found, it stops at OpenCV
    monkeypatch.setenv("SKUFORGE_GROCERY_DATASET", str(tmp_path))
    script = importlib.import_module(f"bench.data.matting_real.{name}")
    with pytest.raises(SystemExit) as stopped:
        script.main(["--only", INSTORE_ID] if name == "make_instore_masks" else [])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/" in err and "no such photo" in err  # looked for where the variable says


@pytest.mark.parametrize("name", MASK_SCRIPTS)
def test_a_mask_script_without_a_dataset_says_what_to_set(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SKUFORGE_GROCERY_DATASET", raising=False)
    script = importlib.import_module(f"bench.data.matting_real.{name}")
    with pytest.raises(SystemExit) as stopped:
        script.main([])
    assert stopped.value.code == 2
    assert "--data (or SKUFORGE_GROCERY_DATASET)" in capsys.readouterr().err


def test_the_mask_scripts_share_one_opencv_message() -> None:
    catalogue = importlib.import_module("bench.data.matting_real.make_catalogue_masks")
    instore = importlib.import_module("bench.data.matting_real.make_instore_masks")
    assert catalogue.NO_OPENCV is instore.NO_OPENCV


@pytest.mark.parametrize("text", ["abc", "a b", "milk oat drink"])
def test_a_caption_cut_to_no_room_is_empty_and_a_negative_room_is_refused(text: str) -> None:
    # A negative limit sliced from the end: "abc" cut to -1 characters was "ab", longer than asked.
    from shared.captioning.prompts import _cut_at_word

    assert _cut_at_word(text, 0) == ""
    for limit in range(len(text) + 1):
        assert len(_cut_at_word(text, limit)) <= limit
    with pytest.raises(ValueError, match="-1"):
        _cut_at_word(text, -1)


def test_the_longest_metadata_caption_fits_the_event_contract() -> None:
    # Each field at its limit, in characters NFC spells as three ("\ufb2c"), the longest colour phrase
    # the settings allow: the attribute caption alone fits MAX_CAPTION_CHARS (1,557 characters today).
    from schemas.common import SkuMetadata
    from schemas.events import MAX_CAPTION_CHARS
    from shared.captioning.prompts import SHAPE_PHRASES, compose_caption

    widest = "\ufb2c"
    sku = SkuMetadata(
        sku_id="X-1", name=widest * 200, category="\ufb03" * 100, brand=widest * 100, series=widest * 100
    )
    shape = max(SHAPE_PHRASES, key=lambda name: len(SHAPE_PHRASES[name] or ""))
    caption = compose_caption(sku, ["yellowish green"] * 8, shape, "three-quarter view")
    assert len(caption) <= MAX_CAPTION_CHARS
    # Fitting, not cut: since compose_caption cuts at MAX_CAPTION_CHARS, the length alone always passed.
    assert caption.endswith(f", {SHAPE_PHRASES[shape]}, three-quarter view")


def test_an_attribute_caption_past_the_contract_is_cut_at_a_word() -> None:
    # compose_caption joined whatever it was given: past MAX_CAPTION_CHARS the captioner's own event
    # broke its contract (merge_sentence only cut the sentence it appends, never the caption before it).
    from schemas.common import SkuMetadata
    from schemas.events import MAX_CAPTION_CHARS
    from shared.captioning.prompts import compose_caption

    sku = SkuMetadata(sku_id="X-1", name="Fizzo Zero", category="soda can", brand="Fizzo")
    colours = [f"colour{index}" for index in range(300)]
    caption = compose_caption(sku, colours, "can", "front view")
    assert len(caption) <= MAX_CAPTION_CHARS
    assert caption.startswith("a photo of a colour0, colour1")
    assert caption.split()[-1].rstrip(",").startswith("colour")  # whole words, no dangling comma
    assert not caption.endswith(",")


# The first bytes of an iPhone's HEIC photo: its ftyp box (major brand heic, compatible mif1 and heic),
# then the meta box's header.
IPHONE_HEIC_HEADER = bytes.fromhex("00000018 66747970 68656963 00000000 6d696631 68656963 0000022e 6d657461")


def test_a_heic_named_jpg_in_a_sku_folder_is_told_its_name_does_not_match_its_content(tmp_path: Path) -> None:
    # A GIF (or an AVIF, which Pillow reads) named .jpg was told "its name ends in .jpg, but it holds a
    # GIF"; an iPhone's HEIC named .jpg (as a phone's share sheet writes it) was told only that HEIC is
    # not supported, its owner looking at a .jpg.
    from PIL import Image

    from services.ingest.ingest import IngestError, prepare_all
    from shared.config import load_settings

    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "A-1", "name": "Oat drink", "category": "carton"})
    )
    (folder / "photo.jpg").write_bytes(IPHONE_HEIC_HEADER + bytes(512))
    (folder / "photo.heic").write_bytes(IPHONE_HEIC_HEADER + bytes(512))  # named what it holds: no note
    Image.new("RGB", (96, 96), (10, 40, 80)).save(folder / "other.png")
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    [said] = [line for line in str(refused.value).splitlines() if "photo.jpg" in line]
    assert "export the photo as JPEG or PNG" in said
    assert "its name ends in .jpg, but it holds a HEIC" in said
    [heic] = [line for line in str(refused.value).splitlines() if "photo.heic" in line]
    assert "HEIC" in heic and "but it holds" not in heic


@pytest.mark.parametrize(
    ("shape", "said"),
    [([0, 3, 320, 320], "batch 0"), (["batch", 3, 0, 320], "height 0"), (["batch", 3, 320, 0], "width 0")],
)
def test_a_model_that_fixes_an_input_dimension_at_zero_is_refused_when_opened(
    shape: list[str | int], said: str
) -> None:
    # Opened as a model of max_batch 0 (or a 320 x 0 input); its warm-up then failed with "range() arg 3
    # must not be zero", or blamed the blank warm-up image: "images[0] is 320x0: it has no pixels".
    from shared.matting.session import MattingModelError, U2NetSession

    with pytest.raises(MattingModelError) as refused:
        U2NetSession(one_layer_onnx_bytes(shape), use_gpu=False, threads=1)
    assert said in str(refused.value) and "export it" in str(refused.value)


@pytest.mark.parametrize(
    ("shape", "per_call"),
    [([1, 3, 60000, 60000], "1 x 60000 x 60000"), ([4096, 3, 320, 320], "4096 x 320 x 320")],
)
def test_a_model_too_large_to_warm_up_is_refused_when_opened(shape: list[str | int], per_call: str) -> None:
    # A 60000 x 60000 export opened, and its warm-up asked for 43 GB for its blank image's input alone
    # (a fixed batch of 4096 is padded to 4096 images a call): the matting stage was killed for memory
    # at start-up, saying nothing of why.
    from shared.matting.session import MAX_CALL_INPUT_PIXELS, MattingModelError, U2NetSession

    with pytest.raises(MattingModelError) as refused:
        U2NetSession(one_layer_onnx_bytes(shape), use_gpu=False, threads=1)
    assert per_call in str(refused.value) and f"{MAX_CALL_INPUT_PIXELS:,}" in str(refused.value)


def test_eval_help_says_model_names_the_file_and_does_not_choose_how_it_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # "--model {u2netp,u2net}: its architecture" read as a setting that changes how the file is run; an
    # ONNX file holds its own graph, which eval runs as it is: the option only names it in messages.
    from services.matting.cli import main as matting_cli

    with pytest.raises(SystemExit) as exited:
        matting_cli(["eval", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    said = text.split("--model {u2netp,u2net}", 1)[1].split(" --n ", 1)[0]
    assert "architecture" not in said
    assert "graph" in said and "default u2netp" in said


def test_the_readme_says_what_ingest_of_synths_out_folder_names(tmp_path: Path) -> None:
    # README: "(`skuforge ingest var/synth` for `var/synth/skus`) is named with the folder to ingest
    # instead", as though var/synth held the SKU folders and that was all. It holds skus/ (named, first)
    # and masks/, the renderer's truth, which is named too, in one line: no SKU folder either.
    from services.ingest.ingest import IngestError, prepare_all
    from shared.config import load_settings
    from shared.synth.photo import write_sku_folders
    from tests.support.docs import README

    write_sku_folders(tmp_path, 1, 1, seed=1, size_px=64)
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    problems = str(refused.value).splitlines()[1:]
    assert problems[0].strip().startswith(f"{tmp_path / 'skus'}: holds SKU folders")
    assert any(line.strip().startswith(f"{tmp_path / 'masks'}: not a SKU folder either") for line in problems)
    said = " ".join(README.split()).split("`skuforge ingest var/synth`", 1)[1].split(". ", 1)[0]
    assert "`var/synth/skus`" in said and "`masks/`" in said and "no metadata.json" in said


def test_a_gpu_sized_fixed_batch_still_opens() -> None:
    # The cap only refuses exports no warm-up could hold: at 2048 x 2048 it refused a fixed batch of 64
    # images of 320 x 320 (6.5 M pixels a call), an ordinary GPU export.
    from shared.matting.session import U2NetSession

    session = U2NetSession(one_layer_onnx_bytes([64, 3, 320, 320]), use_gpu=False, threads=1)
    assert session.call_images == 64
