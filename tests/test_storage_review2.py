"""Store, ingest and dataset tools after a review of their error paths: each fault is named in one line
(a CLI error, a TransientError the runtime retries, a dead letter with its reason), never a traceback."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from services.ingest.ingest import IngestError, prepare_all
from services.trainstore.evaluation import EvaluateRefused, heldout_photos
from shared.config import ConfigError, load_settings
from shared.errors import ObjectMissing, TransientError
from shared.store import FileStore, S3Store
from shared.trainstore.manifest import ManifestStore, ManifestUnreadable
from skuforge_cli.main import main as cli_main
from tests.support.trainstore import PREFIX, add_item


def _sku_folder(root: Path, name: str = "oat-drink") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "OAT-1", "name": "Oat", "category": "carton"})
    )
    Image.new("RGB", (64, 64), (10, 40, 80)).save(folder / "photo.png")
    return folder


def _unlookable(monkeypatch: pytest.MonkeyPatch, inside: Path) -> None:
    """Entries under ``inside`` can be listed but not looked at, as in a folder without execute
    permission (`chmod -R 644`): stat answers EACCES. (Root ignores permissions, so it is faked.)"""
    real_stat = Path.stat

    def stat(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.is_relative_to(inside) and self != inside:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    monkeypatch.setattr(Path, "lstat", stat)


def test_a_sku_folder_that_cannot_be_entered_is_a_named_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _sku_folder(tmp_path)
    _unlookable(monkeypatch, folder)
    with pytest.raises(IngestError, match=r"cannot be read .*Permission denied.*check its permissions"):
        prepare_all(tmp_path, load_settings())


def test_a_batch_folder_that_cannot_be_entered_is_a_named_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sku_folder(tmp_path / "batch")
    _unlookable(monkeypatch, tmp_path / "batch")
    with pytest.raises(IngestError, match="check its permissions"):
        prepare_all(tmp_path / "batch", load_settings())


def test_a_heldout_folder_that_cannot_be_entered_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "heldout" / "OAT-1").mkdir(parents=True)
    _unlookable(monkeypatch, tmp_path / "heldout")
    with pytest.raises(EvaluateRefused, match=r"cannot be read .*check its permissions"):
        heldout_photos(tmp_path / "heldout")


def test_a_file_store_lookup_the_disk_refuses_is_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exists() let EIO/ESTALE/EACCES through bare: the runtime took it for a handler bug and, after a
    few tries, dead-lettered good events."""
    store = FileStore(tmp_path)
    store.put_bytes("a/b.bin", b"x")
    assert store.exists("a/b.bin") and not store.exists("a/missing.bin") and not store.exists("a")
    real_stat = Path.stat

    def stale(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "b.bin":
            raise OSError(errno.ESTALE, "Stale file handle", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stale)
    with pytest.raises(TransientError, match="Stale file handle"):
        store.exists("a/b.bin")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("OperationAborted", 409),
        ("IncompleteBody", 400),
        ("XAmzContentSHA256Mismatch", 400),
        ("BadDigest", 400),
    ],
)
def test_s3_answers_that_sending_again_fixes_are_transient(code: str, status: int) -> None:
    store = S3Store("bucket", client=object(), uri_from="the test")  # type: ignore[arg-type]
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = ClientError(response, "PutObject")
    with pytest.raises(TransientError, match=code), store._mapped_errors("s3://bucket/key"):
        raise error


@pytest.mark.parametrize(
    ("setting", "value"),
    [("s3_endpoint_url", "minio:9000"), ("s3_endpoint_url", "ftp://minio"), ("s3_region", "eu west 1")],
)
def test_an_s3_endpoint_or_region_boto3_would_refuse_is_a_settings_error(setting: str, value: str) -> None:
    """boto3 raised ValueError when the store opened: a traceback, for ingest after the whole batch."""
    with pytest.raises(ConfigError, match=setting.upper()):
        load_settings(**{setting: value})


def test_an_unreadable_manifest_row_is_named_by_its_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pydantic traceback from `dataset stats`, a usage error from `export`, and every later event of
    the SKU a handler error, none naming the part."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    add_item(manifests, "SKU-A", "real-0", "real", "reference")
    [part] = [key for key in manifests.store.list_keys(manifests.key("manifests/SKU-A/"))]
    manifests.store.put_bytes(part, manifests.store.get_bytes(part).replace(b'"real"', b'"imaginary"'))
    with pytest.raises(ManifestUnreadable) as unreadable:
        manifests.read_sku("SKU-A")
    assert unreadable.value.reason == "manifest_unreadable"
    assert manifests.store.uri_for(part) in str(unreadable.value)
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    assert cli_main(["dataset", "stats"]) == 1
    err = capsys.readouterr().err
    assert "manifest_unreadable" in err and part in err and "Traceback" not in err


@pytest.mark.parametrize("action", ["stats", "compact"])
def test_one_unreadable_sku_is_named_and_the_others_are_still_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    """`stats` printed nothing and `compact` stopped at the first SKU that did not read, leaving the
    later ones uncompacted and not saying which it had compacted."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for sku_id in ("SKU-A", "SKU-B", "SKU-C"):
        add_item(manifests, sku_id, "real-0", "real", "reference")
        add_item(manifests, sku_id, "real-1", "real", "reference")
    part = sorted(manifests.store.list_keys(manifests.key("manifests/SKU-B/")))[0]
    manifests.store.put_bytes(part, manifests.store.get_bytes(part).replace(b'"real"', b'"imaginary"'))
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    assert cli_main(["dataset", action]) == 1
    out, err = capsys.readouterr()
    assert f"SKU 'SKU-B': manifest_unreadable: {manifests.store.uri_for(part)}" in err
    assert "1 of 3 SKUs could not be read" in err and "Traceback" not in err
    if action == "stats":
        assert [line.split()[0] for line in out.splitlines()[1:]] == ["SKU-A", "SKU-C", "2"]
    else:
        assert json.loads(out) == {"compacted": ["SKU-A", "SKU-C"], "unreadable": ["SKU-B"]}
        for sku_id in ("SKU-A", "SKU-C"):
            names = [
                key.rsplit("/", 1)[1]
                for key in manifests.store.list_keys(manifests.key(f"manifests/{sku_id}/"))
            ]
            assert not [name for name in names if name.startswith("part-d-")]


@pytest.mark.parametrize("action", ["stats", "compact"])
def test_a_sku_whose_parts_keep_changing_is_named_and_the_others_are_still_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    """A SKU whose parts kept vanishing while read (compactions racing the command) stopped `stats` and
    `compact` at it, blaming the store's settings, as an unreadable SKU did before; it is named like
    one now."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for sku_id in ("SKU-A", "SKU-B", "SKU-C"):
        add_item(manifests, sku_id, "real-0", "real", "reference")
        add_item(manifests, sku_id, "real-1", "real", "reference")
    get_bytes = FileStore.get_bytes

    def vanishing(store: FileStore, key: str) -> bytes:
        if "/manifests/SKU-B/" in f"/{key}":
            raise ObjectMissing(f"{key} vanished")  # as a compaction deleting each part after listing
        return get_bytes(store, key)

    monkeypatch.setattr(FileStore, "get_bytes", vanishing)
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    assert cli_main(["dataset", action]) == 1
    out, err = capsys.readouterr()
    assert "SKU 'SKU-B': the manifest parts of SKU-B kept changing while being read (run the" in err
    assert "1 of 3 SKUs could not be read" in err and "Traceback" not in err
    if action == "stats":
        assert [line.split()[0] for line in out.splitlines()[1:]] == ["SKU-A", "SKU-C", "2"]
    else:
        assert json.loads(out) == {"compacted": ["SKU-A", "SKU-C"], "unreadable": ["SKU-B"]}
