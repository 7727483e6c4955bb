"""Review 47 of ingest, second pass: a SKU taken out with --withdraw-sku still has an id, and its rows
and images still have folders in the retraining store."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.ingest import ingest
from services.ingest.ingest import IngestError, ingest_path, withdraw_skus
from shared.config import load_settings
from shared.store import FileStore
from shared.trainstore.settings import TrainstoreSettings
from shared.trainstore.withdrawals import Withdrawals
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri, isolated_settings
from tests.support.ingest import sku_folder, spoil_manifest_part, stored_reference

PREFIX = "trainstore"


def test_a_sku_id_differing_only_in_case_from_a_withdrawn_sku_is_refused(tmp_path: Path) -> None:
    """oatly-001 was taken out with --withdraw-sku: its photos left incoming/, its withdrawn rows and
    markers stayed in the retraining store. OATLY-001 was then taken without a word, as the case check
    read incoming/ only: on a case-insensitive FileStore its rows and images went into the withdrawn
    SKU's folders (its withdrawal markers read as OATLY-001's), and ingesting oatly-001 again to bring
    it back made two classes of one product in every export."""
    store = FileStore(tmp_path / "store")
    settings = isolated_settings("localhost:1", file_store_uri(tmp_path / "store"))
    trainstore = load_settings(TrainstoreSettings, trainstore_prefix=PREFIX)
    store.put_bytes("incoming/oatly-001/0123456789abcdef.png", b"an earlier photo", "image/png")
    stored_reference(store, PREFIX, "oatly-001")
    withdraw_skus(["oatly-001"], settings, store=store, tell=lambda _: None, trainstore=trainstore)
    assert list(store.list_keys("incoming/")) == []
    folder = sku_folder(tmp_path / "batch", "oatly", "OATLY-001")

    # No broker at all: the refusal comes before Kafka is reached, as the folders' own problems do.
    with pytest.raises(IngestError) as refused:
        ingest_path(tmp_path / "batch", settings, store=store, warn=lambda _: None, trainstore=trainstore)

    message = str(refused.value)
    assert "nothing was ingested" in message
    assert (
        f"{folder}: sku_id 'OATLY-001' differs only in case from 'oatly-001', a SKU the retraining store "
        f"holds rows for ({PREFIX}/manifests/oatly-001/)"
    ) in message, message
    assert list(store.list_keys("incoming/")) == []


def test_withdraw_sku_of_a_sku_with_an_unreadable_manifest_part_says_to_run_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge ingest --withdraw-sku A-1` on a SKU whose manifest part does not read exited 1 with
    the trainstore stage's advice, "restore that part ..., then replay the dead letters (skuforge dlq
    replay)": its user had no dead letter to replay, and was not told that nothing was withdrawn, nor
    that the command itself is what to run again."""
    store = FileStore(tmp_path / "store")
    manifests = stored_reference(store, PREFIX, "A-1")
    part = spoil_manifest_part(store, manifests, "A-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", PREFIX)

    assert cli_main(["ingest", "--withdraw-sku", "A-1"]) == 1

    err = capsys.readouterr().err
    assert err.startswith(f"skuforge ingest: manifest_unreadable: {store.uri_for(part)} holds a row"), err
    assert "dlq replay" not in err and "dead letter" not in err, err
    assert "then run the same command again (nothing was withdrawn)" in err, err
    assert Withdrawals(manifests).by_sku() == {}


def _cut_outs(folder: Path) -> tuple[Path, Path]:
    """Two cut-outs of one picture over white, with other outlines: the second's also holds an opaque
    white band, which its flattened picture cannot tell from the white it is flattened on."""
    first = np.zeros((96, 96, 4), np.uint8)
    first[20:76, 20:76] = (200, 30, 30, 255)
    second = first.copy()
    second[80:90, :] = (255, 255, 255, 255)
    Image.fromarray(first, "RGBA").save(folder / "a-cut-out.png")
    Image.fromarray(second, "RGBA").save(folder / "b-cut-out.png")
    return folder / "a-cut-out.png", folder / "b-cut-out.png"


def test_a_second_cut_out_of_the_picture_with_another_outline_is_said_to_be_dropped(tmp_path: Path) -> None:
    """ "b-cut-out.png is the same picture as a-cut-out.png and is not ingested a second time": the
    picture is, but its outline (the product's mask the captioner takes) is another, and which of the two
    became the mask went unsaid."""
    folder = sku_folder(tmp_path, "A", "A-1")
    (folder / "IMG_1.jpg").unlink()
    first, second = _cut_outs(folder)

    warnings: list[str] = []
    assert ingest.survey_folders(tmp_path, load_settings(), warn=warnings.append) == [("A-1", 1)]

    [copy] = [w for w in warnings if "same picture" in w]
    assert copy == (
        f"SKU A-1: {second} is the same picture as {first} with another outline (its transparency); "
        f"{first}'s outline is kept as the product's mask and {second} is not ingested (remove the one "
        "whose outline is wrong)"
    ), copy
    [sku] = ingest.prepare_all(tmp_path, load_settings())
    [photo] = sku.photos
    assert photo.mask_png is not None
    assert (np.asarray(Image.open(io.BytesIO(photo.mask_png))) > 0).sum() == 56 * 56


def test_a_second_cut_out_with_the_same_outline_is_still_just_a_copy(tmp_path: Path) -> None:
    folder = sku_folder(tmp_path, "A", "A-1")
    (folder / "IMG_1.jpg").unlink()
    first, _ = _cut_outs(folder)
    shutil.copy(first, folder / "c-copy.png")

    warnings: list[str] = []
    ingest.survey_folders(tmp_path, load_settings(), warn=warnings.append)

    assert (
        f"SKU A-1: {folder / 'c-copy.png'} is the same picture as {first} and is not ingested a second time"
        in warnings
    ), warnings
