"""Storage and input-validation review: each test reproduces a defect a user or operator would see."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

import shared.model_cache as model_cache
from schemas.common import ObjectRef
from shared.errors import BadInput
from shared.images import decode_image, decode_mask
from shared.model_cache import fetch_directory, fetch_file
from shared.store import FileStore, ObjectStore, open_store

# --- store: a key segment no filesystem can name -------------------------------------------


def test_overlong_key_segment_in_an_event_is_bad_input_not_a_retry(tmp_path: Path) -> None:
    # ENAMETOOLONG used to surface as TransientError: the runtime paused the partition and
    # retried the event forever instead of dead-lettering it.
    store = FileStore(tmp_path)
    store.put_bytes("incoming/sku-1/photo.png", b"png")
    uri = f"{store.base_uri}/incoming/sku-1/{'x' * 256}.png"
    with pytest.raises(BadInput) as info:
        store.read_verified(ObjectRef(uri=uri, sha256="0" * 64, bytes=1))
    assert info.value.reason == "unsafe_key"
    for key in (f"a/{'x' * 256}", f"a/{'é' * 128}"):  # the limit is in bytes, as the OS counts
        with pytest.raises(ValueError, match="255 bytes"):
            store.put_bytes(key, b"x")
        with pytest.raises(ValueError, match="255 bytes"):
            store.exists(key)
    longest = f"a/{'x' * 255}"
    assert store.read_verified(store.put_bytes(longest, b"x")) == b"x"


# --- images: transparency given by a colour key (PNG tRNS) ---------------------------------


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes, trns: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tRNS", trns)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_colour_keyed_transparency_is_composited_like_alpha() -> None:
    # A cut-out whose transparent background is stored as "black is transparent" (what PNG
    # optimisers write instead of RGBA) decoded with a black background, not white.
    red, black = b"\xff\x00\x00", b"\x00\x00\x00"
    rgb = _png(2, 1, 8, 2, b"\x00" + red + black, trns=b"\x00\x00\x00\x00\x00\x00")
    assert np.asarray(decode_image(rgb)).tolist() == [[[255, 0, 0], [255, 255, 255]]]

    gray = _png(2, 1, 8, 0, b"\x00\xc8\x00", trns=b"\x00\x00")
    assert np.asarray(decode_image(gray)).tolist() == [[[200, 200, 200], [255, 255, 255]]]

    gray16 = _png(2, 1, 16, 0, b"\x00" + struct.pack(">HH", 65535, 0), trns=b"\x00\x00")
    assert np.asarray(decode_image(gray16)).tolist() == [[[255, 255, 255], [255, 255, 255]]]

    # Masks: a transparent pixel is background even when its hidden colour is white.
    white = b"\xff\xff\xff"
    mask = _png(2, 1, 8, 2, b"\x00" + white + white, trns=b"\x00\xff\x00\xff\x00\xff")
    assert decode_mask(mask).tolist() == [[0, 0]]
    opaque = Image.new("RGB", (2, 1), (255, 255, 255))
    buffer = io.BytesIO()
    opaque.save(buffer, "PNG", transparency=(0, 0, 0))
    assert decode_mask(buffer.getvalue()).tolist() == [[255, 255]]


# --- model cache ---------------------------------------------------------------------------


def _model_folder(store: ObjectStore, name: str, config: bytes = b'{"model": 1}') -> str:
    store.put_bytes(f"{name}/config.json", config)
    store.put_bytes(f"{name}/weights.bin", b"w" * 1000)
    return f"{store.base_uri}/{name}"


def test_fetch_file_replaces_a_damaged_cached_copy(tmp_path: Path) -> None:
    source = FileStore(tmp_path / "models")
    model = bytes(range(256)) * 40
    uri = source.put_bytes("matting/model.onnx", model).uri
    cached = fetch_file(uri, tmp_path / "cache", uri_from="the test")
    damaged = bytearray(cached.read_bytes())
    damaged[100] ^= 0xFF  # same size, other bytes (a power cut, a bad disk)
    cached.write_bytes(bytes(damaged))
    again = fetch_file(uri, tmp_path / "cache", uri_from="the test")
    assert again.read_bytes() == model


def test_cache_names_fit_the_file_system_however_long_the_object_name(tmp_path: Path) -> None:
    """``<digest16>-<name>`` over 255 bytes was ENAMETOOLONG: the name is shortened (by UTF-8 bytes,
    never mid-character), its suffix kept; the digest still tells copies apart."""
    source = FileStore(tmp_path / "models")
    long_name = "é" * 120 + ".onnx"  # 245 bytes: fits the FileStore, not beside a digest
    cached = fetch_file(
        source.put_bytes(f"matting/{long_name}", b"onnx" * 100).uri, tmp_path / "cache", uri_from="the test"
    )
    assert cached.read_bytes() == b"onnx" * 100
    assert len(cached.name.encode()) <= 255 and cached.name.endswith("é.onnx")
    folder = fetch_directory(_model_folder(source, "blip-" * 49), tmp_path / "cache", uri_from="the test")
    assert len(folder.name.encode()) <= 255 and (folder / "config.json").is_file()


def test_cached_models_get_the_modes_the_umask_gives(tmp_path: Path) -> None:
    """mkstemp and mkdtemp make 0600 files and 0700 folders: a cache shared with a process of another
    user (Triton's, say) could not read the copies, though the umask allowed it."""
    source = FileStore(tmp_path / "models")
    uri = source.put_bytes("matting/model.onnx", b"onnx" * 100).uri
    folder_uri = _model_folder(source, "blip")
    previous = os.umask(0o022)
    try:
        cached = fetch_file(uri, tmp_path / "cache", uri_from="the test")
        folder = fetch_directory(folder_uri, tmp_path / "cache", uri_from="the test")
    finally:
        os.umask(previous)
    assert cached.stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "weights.bin").stat().st_mode & 0o777 == 0o644


def test_fetch_directory_replaces_a_truncated_cached_copy(tmp_path: Path) -> None:
    source = FileStore(tmp_path / "models")
    uri = _model_folder(source, "blip")
    first = fetch_directory(uri, tmp_path / "cache", uri_from="the test")
    (first / "weights.bin").write_bytes(b"w" * 10)
    again = fetch_directory(uri, tmp_path / "cache", uri_from="the test")
    assert (again / "weights.bin").read_bytes() == b"w" * 1000
    (again / "weights.bin").unlink()
    assert (
        fetch_directory(uri, tmp_path / "cache", uri_from="the test") / "weights.bin"
    ).read_bytes() == b"w" * 1000


class _OtherProcessFinishesFirst(FileStore):
    """A source store on which another process completes the same fetch during our download."""

    def __init__(self, root: Path, uri: str, cache: Path) -> None:
        super().__init__(root)
        self.uri, self.cache = uri, cache
        self.other: Path | None = None

    def iter_bytes(self, uri_or_key: str) -> Iterator[bytes]:
        if self.other is None:
            self.other = fetch_directory(self.uri, self.cache, uri_from="the test")
            # Stands for the other process's state in its copy (a model it is loading from it).
            (self.other / "in-use").write_bytes(b"")
        return super().iter_bytes(uri_or_key)


def test_fetch_directory_keeps_a_copy_another_process_finished(tmp_path: Path) -> None:
    # The slower process used to delete the finished copy and rename its own over it, pulling
    # files from under the faster process while it loaded them.
    uri = _model_folder(FileStore(tmp_path / "models"), "blip")
    slow = _OtherProcessFinishesFirst(tmp_path / "models", uri, tmp_path / "cache")
    ours = fetch_directory(uri, tmp_path / "cache", store=slow, uri_from="the test")
    assert ours == slow.other
    assert (ours / "in-use").exists(), "the other process's copy was deleted and replaced"
    assert (ours / "config.json").read_bytes() == b'{"model": 1}'
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [ours.name]


def test_fetch_directory_two_processes_renaming_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other process renames its copy into place just before ours: the rename of a folder
    # onto a non-empty one failed with "Directory not empty" and the service did not start. Processes
    # that take the cache's install lock cannot meet so; one that could not take it (NFS refuses an
    # exclusive flock on a read-only descriptor) still can.
    uri = _model_folder(FileStore(tmp_path / "models"), "blip")
    cache = tmp_path / "cache"
    real_rename, real_flock = os.rename, fcntl.flock
    other: list[Path] = []
    other_inode: list[int] = []

    def flock_refused(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        real_flock(fd, operation)

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if not other and Path(src).name.startswith(".partial-") and Path(src).is_dir():
            monkeypatch.setattr(model_cache.os, "rename", real_rename)
            with pytest.MonkeyPatch.context() as on_nfs:
                on_nfs.setattr(fcntl, "flock", flock_refused)
                other.append(fetch_directory(uri, cache, uri_from="the test"))
                other_inode.append(other[0].stat().st_ino)
        real_rename(src, dst)

    monkeypatch.setattr(model_cache.os, "rename", rename)
    ours = fetch_directory(uri, cache, uri_from="the test")
    assert other == [ours]
    assert [ours.stat().st_ino] == other_inode, "the whole copy the other process holds was replaced"
    assert (ours / "weights.bin").read_bytes() == b"w" * 1000
    assert sorted(p.name for p in cache.iterdir()) == [ours.name]


def test_fetch_directory_same_relative_uri_in_two_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "file://./models/blip" names a different folder from each working directory; both were
    # cached under one name, so the second service silently loaded the first one's model.
    cache = tmp_path / "cache"
    for service, config in (("a", b'{"model": "a"}'), ("b", b'{"model": "b"}')):
        _model_folder(FileStore(tmp_path / service / "models"), "blip", config)
    monkeypatch.chdir(tmp_path / "a")
    first = fetch_directory("file://./models/blip", cache, uri_from="the test")
    monkeypatch.chdir(tmp_path / "b")
    second = fetch_directory("file://./models/blip", cache, uri_from="the test")
    assert (first / "config.json").read_bytes() == b'{"model": "a"}'
    assert (second / "config.json").read_bytes() == b'{"model": "b"}'


def test_fetch_directory_same_bucket_on_two_s3_servers(
    tmp_path: Path, s3_endpoint: str, other_s3_endpoint: str
) -> None:
    # A MinIO and a moto (or AWS) both holding s3://models/blip: both were cached under one name, so
    # the service pointed at the second server loaded the first server's model.
    cache = tmp_path / "cache"
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    for endpoint, config in ((s3_endpoint, b'{"model": "a"}'), (other_s3_endpoint, b'{"model": "b"}')):
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        _model_folder(
            open_store(f"s3://{bucket}", s3_endpoint_url=endpoint, uri_from="the test"), "blip", config
        )
    uri = f"s3://{bucket}/blip"

    first = fetch_directory(uri, cache, s3_endpoint_url=s3_endpoint, uri_from="the test")
    second = fetch_directory(uri, cache, s3_endpoint_url=other_s3_endpoint, uri_from="the test")
    assert (first / "config.json").read_bytes() == b'{"model": "a"}'
    assert (second / "config.json").read_bytes() == b'{"model": "b"}'
    # The server is named one way however it is spelled, and through the caller's own store too.
    assert (
        fetch_directory(uri, cache, s3_endpoint_url=f"HTTP://{other_s3_endpoint[7:]}/", uri_from="the test")
        == second
    )
    own_store = open_store(f"s3://{bucket}", s3_endpoint_url=s3_endpoint, uri_from="the test")
    assert fetch_directory(uri, cache, store=own_store, uri_from="the test") == first
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])


def test_fetch_directory_file_source_keeps_its_cache_name(tmp_path: Path) -> None:
    # Copies already in caches stay valid: a file:// folder is named by its absolute URI alone.
    uri = _model_folder(FileStore(tmp_path / "models"), "blip")
    digest = hashlib.sha256(f"file://{tmp_path}/models/blip".encode()).hexdigest()[:16]
    assert (
        fetch_directory(uri, tmp_path / "cache", uri_from="the test") == tmp_path / "cache" / f"blip-{digest}"
    )


def _refused_before_any_download(store: ObjectStore, uri: str, cache: Path) -> str:
    """Why ``fetch_directory`` refuses the folder at ``uri``, checked to have downloaded none of its files."""
    fetched: list[str] = []
    real_get_bytes, real_iter_bytes = store.get_bytes, store.iter_bytes

    def get_bytes(uri_or_key: str) -> bytes:
        fetched.append(uri_or_key)
        return real_get_bytes(uri_or_key)

    def iter_bytes(uri_or_key: str) -> Iterator[bytes]:
        fetched.append(uri_or_key)
        return real_iter_bytes(uri_or_key)

    store.get_bytes = get_bytes  # type: ignore[method-assign]
    store.iter_bytes = iter_bytes  # type: ignore[method-assign]
    with pytest.raises(ValueError) as info:
        fetch_directory(uri, cache, store=store, uri_from="the test")
    assert fetched == []
    return str(info.value)


def test_a_model_folder_with_a_file_name_no_file_system_takes_is_refused_up_front_naming_it(
    tmp_path: Path, s3_endpoint: str
) -> None:
    # S3 takes a key segment of any length, but the copy keeps the folder's file names (a diffusers or
    # BLIP folder is read by them): one over 255 bytes cannot be copied. It was refused mid-copy, after
    # every file sorted before it was downloaded (gigabytes of weights), naming 40 bytes of the segment.
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    store = open_store(f"s3://{bucket}", s3_endpoint_url=s3_endpoint, uri_from="the test")
    uri = _model_folder(store, "blip")
    long_name = "z" * 300 + ".safetensors"
    client.put_object(Bucket=bucket, Key=f"blip/unet/{long_name}", Body=b"w")
    assert _refused_before_any_download(store, uri, tmp_path / "cache") == (
        f"{uri}/ holds unet/{long_name}, with a name of 312 bytes: no file system takes a name over 255 "
        "bytes, and the model's files are read by name; rename it in the store"
    )
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_model_folder_with_a_file_name_the_store_cannot_read_is_refused_up_front_naming_it(
    tmp_path: Path,
) -> None:
    # A file named with a backslash (or 'a//b' in S3) was refused mid-copy, after the files sorted
    # before it were downloaded, by a bare "key ... contains a backslash" naming no folder.
    store = FileStore(tmp_path / "models")
    uri = _model_folder(store, "blip")
    (tmp_path / "models" / "blip" / "z\\b.bin").write_bytes(b"w")
    assert _refused_before_any_download(store, uri, tmp_path / "cache") == (
        f"{uri}/ holds 'z\\\\b.bin', which the store cannot read (key 'blip/z\\\\b.bin' contains a "
        "backslash); rename it in the store"
    )
