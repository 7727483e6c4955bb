"""Review 49: ``dataset export`` of a manifest row whose image or mask key the store refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import BadInput, ObjectMissing
from shared.store import FileStore
from shared.trainstore.dataset import export_dataset
from shared.trainstore.manifest import ManifestRow, ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.trainstore import PREFIX, add_item

RAW = ("\n", "\x1b", "\u202e")


def _store_with(tmp_path: Path, **objects: str) -> ManifestStore:
    """A store whose SKU-A has one good real photo and item ``odd``, whose row names ``objects``."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    good = add_item(manifests, "SKU-A", "real-0", "real", "reference")
    fields = {"image": good.image, "image_sha256": good.image_sha256, "mask": None, **objects}
    odd = ManifestRow(item_id="odd", sku_id="SKU-A", category="soda can", source="real", status="reference")
    manifests.append("SKU-A", [odd.model_copy(update=fields)])
    return manifests


@pytest.mark.parametrize("image", ["images/SKU-A/a\nb.png", "images/SKU-A/a\x1b[31mb.png"])
def test_an_image_key_no_store_reads_stops_the_export_naming_the_row_and_the_key_escaped(
    tmp_path: Path, image: str
) -> None:
    # A row written by hand or by another tool. The store's bare ValueError reached the command line as
    # a usage error that named neither the SKU nor the item, and said nothing of what to do.
    manifests = _store_with(tmp_path, image=image)
    with pytest.raises(BadInput) as refused:
        export_dataset(manifests, tmp_path / "out", fmt="imagefolder", max_synthetic_per_real=1)
    message = str(refused.value)
    assert refused.value.reason == "unsafe_key"
    assert "the image of SKU-A/odd" in message and "restore its manifest part" in message
    assert "leave SKU-A out with --sku" in message
    assert image.encode("unicode_escape").decode("ascii") in message
    assert not any(raw in message for raw in RAW)
    assert not (tmp_path / "out").exists()


def test_the_command_says_so_with_exit_1_not_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = _store_with(tmp_path, image="images/SKU-A/a\nb.png")
    monkeypatch.setenv("SKUFORGE_STORE_URI", manifests.store.base_uri)
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", PREFIX)
    out = tmp_path / "out"
    code = cli_main(["dataset", "export", str(out), "--format", "jsonl", "--max-synthetic-per-real", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "usage:" not in err and "the image of SKU-A/odd" in err and f"nothing was written to {out}" in err
    assert len(err.strip().splitlines()) == 1


def test_a_lost_mask_under_a_key_written_before_review_48_names_its_uri_escaped(tmp_path: Path) -> None:
    # A key a store reads but no longer writes (a bidi control): its object lost, the refusal built its
    # URI with uri_for, which refuses the key: a ValueError about the key hid that the mask was lost.
    manifests = _store_with(tmp_path, mask="masks/SKU-A/a\u202eb.png", mask_sha256="0" * 64)
    with pytest.raises(ObjectMissing) as refused:
        export_dataset(manifests, tmp_path / "out", fmt="jsonl", max_synthetic_per_real=1)
    message = str(refused.value)
    assert "no object at" in message and "the mask of SKU-A/odd" in message
    assert "masks/SKU-A/a\\u202eb.png" in message and "\u202e" not in message
