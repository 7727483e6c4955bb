"""Review 45 leftovers: a NaN dict key in a results file, a photo's name rule in one place, the
official weights' refusal in one line, and every bench script's main under run_command."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.argtypes import NonFiniteFigure, json_file_text


@pytest.mark.parametrize("key", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_key_is_refused_naming_it(key: float) -> None:
    # json.dumps(allow_nan=False) refuses a float key JSON has not as it refuses such a value.
    with pytest.raises(NonFiniteFigure, match=rf"bench: a key of per_sku\.Kiwi is {key}, which JSON has not"):
        json_file_text({"per_sku": {"Kiwi": {key: 1.0}}}, label="bench")
    with pytest.raises(NonFiniteFigure, match=rf"bench: a key of the document is {key}"):
        json_file_text({key: 1.0}, label="bench")


def test_bench_matting_real_refuses_an_official_model_of_another_md5_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # OfficialWeightsError was a plain Exception: run_command let it through as a traceback.
    from bench.matting_real import main

    (tmp_path / "val.txt").write_text("")
    for name in ("ours.onnx", "ours_int8.onnx"):
        (tmp_path / name).write_bytes(b"")
    official = tmp_path / "official.onnx"
    official.write_bytes(b"not the official U2-NetP")
    argv = ["--dataset", str(tmp_path), "--ours", str(tmp_path / "ours.onnx")]
    argv += ["--ours-int8", str(tmp_path / "ours_int8.onnx"), "--official", str(official)]
    argv += ["--renderer", "0", "--out", str(tmp_path / "o.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m bench.matting_real: {official}: md5 ")
    assert "is not the official U2-NetP's" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


def test_a_hidden_folder_named_as_a_photo_is_left_out_quietly_as_every_hidden_folder(tmp_path: Path) -> None:
    # A file named only by a photo's extension (".jpg": a DAM's export with an empty title) is a photo;
    # a folder so named was then reported as a problem of its SKU, where a hidden folder is skipped.
    from PIL import Image

    from services.ingest.ingest import photo_files
    from shared.photos import is_left_out_quietly, key_left_out_quietly

    sku = tmp_path / "oat"
    (sku / ".jpg").mkdir(parents=True)
    (sku / "..png").mkdir()
    Image.new("RGB", (64, 64), (30, 200, 30)).save(sku / "a.jpg", "JPEG")
    photos, problems = photo_files(sku)
    assert [photo.name for photo in photos] == ["a.jpg"]
    assert problems == []
    assert is_left_out_quietly(".JPG", is_folder=True) and not is_left_out_quietly(".JPG")
    assert key_left_out_quietly(["shelves", ".jpg", "a.jpg"]) and not key_left_out_quietly(
        ["shelves", ".jpg"]
    )


def test_int8_calibration_reads_a_photo_named_only_by_its_extension(tmp_path: Path) -> None:
    # Ingest takes ".jpg" (a DAM's export with an empty title) as a photo; calibration read Path.suffix
    # ("" for it) and its own dot-file rule, so such a folder was "no photo directly in" it.
    from PIL import Image

    from shared.matting.quantize import calibration_photos

    Image.new("RGB", (64, 48), (30, 200, 30)).save(tmp_path / ".jpg", "JPEG")
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (tmp_path / ".heic").mkdir()  # a hidden folder, not an iPhone's photo
    [photo] = calibration_photos(0, 0, [tmp_path], 1)
    assert photo.size == (64, 48)
