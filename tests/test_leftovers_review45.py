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
