"""The model cache is refused when another local user could plant model files in it.

Its default place, <system temp>/skuforge-models, is in a world-writable /tmp under a known name, and
torch/pickle weights run code when loaded: like ssh with ``~/.ssh``, a stage makes the folder for its
user alone and refuses, there, one another user owns or may write to, at start-up, naming it. A folder
configured on purpose may be shared with a group; one everyone may write to is refused anywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from shared.generation.adapters import AdapterRegistry
from shared.model_cache import fetch_directory, fetch_file, open_cache
from shared.store import FileStore
from tests.support.lora import lora_weights
from tests.support.model_cache import publish, publish_folder

# Another user than the one running the tests (as root, files can be given to it).
NOBODY_UID = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def _model_file(tmp_path: Path) -> str:
    return publish(tmp_path / "store", "u2netp.onnx", b"weights " * 100)


def _model_folder(tmp_path: Path) -> str:
    return publish_folder(tmp_path / "store", "blip")


def test_a_missing_cache_folder_is_made_for_this_user_alone(tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    fetch_file(_model_file(tmp_path), cache, uri_from="the test")

    assert cache.stat().st_mode & 0o777 == 0o700


def test_a_cache_everyone_may_write_to_stops_the_matting_stage_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from services.matting.config import MattingSettings
    from services.matting.stage import open_matting_session
    from shared.config import ConfigError, load_settings

    cache = tmp_path / "skuforge-models"
    cache.mkdir()
    cache.chmod(0o1777)  # as another user (or a careless setup) may have made it in /tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    settings = load_settings()

    with pytest.raises(ConfigError) as refused:
        open_matting_session(load_settings(MattingSettings, matting_model=_model_file(tmp_path)), settings)

    message = str(refused.value)
    assert f"{cache} is writable by everyone (mode 1777)" in message
    assert "\n" not in message
    assert list(cache.iterdir()) == []  # nothing was copied into it


def test_the_default_cache_its_group_may_write_to_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "skuforge-models"
    cache.mkdir()
    cache.chmod(0o770)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    with pytest.raises(PermissionError, match=rf"{cache} is writable by its group .*chmod go-w"):
        fetch_directory(_model_folder(tmp_path), None, uri_from="the test")


def test_a_cache_folder_configured_for_a_group_is_shared_as_configured(tmp_path: Path) -> None:
    # A folder the operator chose (a volume the pod's fsGroup may write to, stages of several users) is
    # theirs to share; only one everyone may write to is refused there.
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o2770)

    assert (fetch_directory(_model_folder(tmp_path), cache, uri_from="the test") / "config.json").is_file()
    cache.chmod(0o777)
    with pytest.raises(PermissionError, match=rf"{cache} is writable by everyone"):
        fetch_file(_model_file(tmp_path), cache, uri_from="the test")


@needs_root
def test_the_default_cache_another_user_owns_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "skuforge-models"
    cache.mkdir(mode=0o755)
    os.chown(cache, NOBODY_UID, NOBODY_UID)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    with pytest.raises(PermissionError, match=rf"{cache} .*belongs to uid {NOBODY_UID}, not to this user"):
        fetch_file(_model_file(tmp_path), None, uri_from="the test")


@needs_root
def test_a_model_folder_another_user_planted_is_refused_however_complete(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    uri, cache = _model_folder(tmp_path), None
    copy = fetch_directory(
        uri, cache, uri_from="the test"
    )  # stands for the one planted, marker and checksums matching
    for path in [copy, *copy.rglob("*")]:
        os.chown(path, NOBODY_UID, NOBODY_UID)

    with pytest.raises(PermissionError, match=rf"{copy} .*belongs to uid {NOBODY_UID}"):
        fetch_directory(uri, cache, uri_from="the test")


@needs_root
def test_an_adapter_copy_another_user_planted_is_retried_naming_it_not_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its UnsafeCache (a PermissionError) reached the Triton model unmapped: logged with a traceback and
    # answered backend_error, so the stage dead-lettered good variants for an operator's fault. Now the
    # variant waits (backend_unavailable: retried, never dead-lettered) with a line naming the copy.
    from services.generator.protocol import BACKEND_UNAVAILABLE_PREFIX
    from services.generator.server import GenerationModel
    from tests.support.adapters import backend_on
    from tests.support.generation import triton_request

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    adapter = registry.register(
        "cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15"
    )
    cache = open_cache(None)
    planted = cache / f"lora-{adapter.weights_sha256[:16]}"  # another user made it first
    planted.mkdir()
    os.chown(planted, NOBODY_UID, NOBODY_UID)
    model = GenerationModel(backend_on(registry, tmp_path, cache_dir=cache))

    with caplog.at_level(logging.WARNING):
        (answer,) = model([triton_request([11], series="Cola")])

    (error,) = (cell[0].decode() for cell in answer["error"])
    assert error.startswith(BACKEND_UNAVAILABLE_PREFIX)
    assert f"{planted} " in error and "SKUFORGE_DIFFUSION_CACHE_DIR" in error
    assert any(str(planted) in record.getMessage() for record in caplog.records)
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []  # no traceback
    # Once the operator removes it, the variant is served with its adapter.
    shutil.rmtree(planted)
    (answer,) = model([triton_request([11], series="Cola")])
    assert answer["error"][0][0] == b"" and answer["adapter_used"][0][0] == b"cola-v"


def _writable_by_everyone(paths: list[Path]) -> list[str]:
    return [str(path) for path in paths if path.stat().st_mode & 0o002]


def test_a_cached_file_left_world_writable_is_replaced_not_reused(tmp_path: Path) -> None:
    # A copy made before the cache masked everyone's write bit (under umask 000) was reused as it was:
    # any local user could change the weights a stage loads, at their size, between two starts.
    uri, cache = _model_file(tmp_path), tmp_path / "cache"
    copy = fetch_file(uri, cache, uri_from="the test")
    copy.chmod(0o666)
    # Another user opened it while everyone could: a chmod alone would leave them this handle.
    with copy.open("r+b") as other_users_handle:
        assert fetch_file(uri, cache, uri_from="the test") == copy
        other_users_handle.write(b"planted!")

    assert _writable_by_everyone([copy]) == []
    assert copy.read_bytes() == b"weights " * 100


def test_a_cached_folder_left_world_writable_is_replaced_not_reused(tmp_path: Path) -> None:
    # Its files' digests are checked against its own marker, which anyone could rewrite in such a folder.
    uri, cache = _model_folder(tmp_path), tmp_path / "cache"
    copy = fetch_directory(uri, cache, uri_from="the test")
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    with (copy / "config.json").open("r+b") as other_users_handle:
        assert fetch_directory(uri, cache, uri_from="the test") == copy
        other_users_handle.write(b"planted!")

    assert _writable_by_everyone([copy, *copy.rglob("*")]) == []
    assert (copy / "config.json").read_bytes() == b'{"model_type": "blip"}'
    assert sorted(path.name for path in cache.iterdir()) == [copy.name]


def test_a_cached_adapter_left_world_writable_is_replaced_not_reused(tmp_path: Path) -> None:
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    adapter = registry.register(
        "cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15"
    )
    cache = open_cache(tmp_path / "cache")
    copy = registry.fetch_weights(adapter, cache)
    weights = copy / adapter.weight_name
    copy.chmod(0o777)
    weights.chmod(0o666)
    with weights.open("r+b") as other_users_handle:
        assert registry.fetch_weights(adapter, cache) == copy
        other_users_handle.write(b"planted!")

    assert _writable_by_everyone([copy, weights]) == []
    assert weights.read_bytes() == lora_weights(1)
