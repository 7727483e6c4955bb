"""Registering an adapter's weights again, on the real stores: weights the registry already holds, as
they are, are not uploaded again (they run to hundreds of MB); damaged ones are. A registration waiting
for another's lock says so where `skuforge adapters register`'s user sees it."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shared.generation import adapters as adapters_module
from shared.generation.adapters import REGISTER_LOCKS, AdapterRegistry, RegistryStoreFailed, weights_file_name
from shared.store import FileStore, ObjectStore, sha256_hex
from skuforge_cli.main import main as skuforge_main
from tests.support.lora import lora_weights
from tests.support.s3 import file_or_s3_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return file_or_s3_store(request, tmp_path / "adapters")


def _counting_puts(store: ObjectStore) -> tuple[ObjectStore, list[str]]:
    """The same store, and the keys of every ``put_bytes`` made through it."""
    counting = copy.copy(store)
    put_bytes = counting.put_bytes
    puts: list[str] = []

    def counted(key: str, data: bytes, content_type: str = "application/octet-stream") -> object:
        puts.append(key)
        return put_bytes(key, data, content_type)

    counting.put_bytes = counted  # type: ignore[assignment,method-assign]
    return counting, puts


def test_registering_the_same_weights_again_uploads_them_once(store: ObjectStore) -> None:
    """Each registration wrote the weights again, though they were there under their own sha256."""
    counting, puts = _counting_puts(store)
    registry = AdapterRegistry(counting)
    weights_key = f"cola-v/{weights_file_name(sha256_hex(lora_weights(1)))}"

    for _ in range(2):
        registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")

    assert puts.count(weights_key) == 1
    assert registry.registered_weights(registry.get("cola-v")) == lora_weights(1)


@pytest.mark.parametrize("damage", ["same size", "cut short"])
def test_weights_damaged_in_the_store_are_uploaded_again(store: ObjectStore, damage: str) -> None:
    """Registering the weights again is how damaged ones are mended: skipped on their name alone, the
    damage stayed, and every generator refused them."""
    registry = AdapterRegistry(store)
    weights = lora_weights(1)
    metadata = registry.register("cola-v", weights, kind="specialized", series="Cola", base_model="sd15")
    damaged = weights[:-1] + bytes([weights[-1] ^ 1]) if damage == "same size" else weights[:-1]
    store.put_bytes(f"cola-v/{metadata.weight_name}", damaged)

    registry.register("cola-v", weights, kind="specialized", series="Cola", base_model="sd15")

    assert registry.registered_weights(registry.get("cola-v")) == weights  # ChecksumMismatch when damaged


def test_the_cli_says_it_waits_for_another_registrations_lock(tmp_path: Path) -> None:
    """`skuforge adapters register` waited silently (up to 120s on a killed registration's lock): the
    message was logged at INFO, which a command with no logging set up does not show."""
    adapters = FileStore(tmp_path / "adapters")
    lock_key = f"{REGISTER_LOCKS}/cola-v.json"
    adapters.put_json(lock_key, {"registration": "other", "host": "elsewhere", "pid": 1})
    weights = tmp_path / "cola.safetensors"
    weights.write_bytes(lora_weights(1))
    env = {name: value for name, value in os.environ.items() if not name.startswith("SKUFORGE_")}
    env["SKUFORGE_DIFFUSION_ADAPTERS_URI"] = adapters.base_uri
    command = [sys.executable, "-m", "skuforge_cli", "adapters", "register", "cola-v", str(weights)]
    command += ["--kind", "specialized", "--series", "Cola", "--base-model", "sd15"]
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as registering:
        assert registering.stderr is not None
        told = registering.stderr.readline()
        adapters.delete(lock_key)  # the other registration ends
        out, _ = registering.communicate()

    assert "waiting for another registration of adapter cola-v" in told, told
    assert adapters.uri_for(lock_key) in told
    assert registering.returncode == 0
    assert json.loads(out)["adapter_id"] == "cola-v"


@pytest.mark.parametrize("in_the_way", ["folder", "dangling link"])
@pytest.mark.parametrize("action", ["register", "remove"])
def test_what_stands_at_the_lock_and_is_no_object_is_an_error_not_a_wait(
    tmp_path: Path, in_the_way: str, action: str
) -> None:
    """A folder or a link to nothing at the lock's path: put_new found something there, a read found no
    object, and the registration (or removal) tried again at once, forever, at 100% CPU and without a word."""
    store = FileStore(tmp_path / "adapters")
    registry = AdapterRegistry(store)
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")
    lock = store.root / REGISTER_LOCKS / "cola-v.json"
    if in_the_way == "folder":
        lock.mkdir(parents=True)
    else:
        lock.symlink_to(store.root / "nothing")  # inside the root: one outside is refused as unsafe
    raised: list[BaseException] = []

    def run() -> None:
        try:
            if action == "register":
                registry.register(
                    "cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15"
                )
            else:
                registry.remove("cola-v")
        except BaseException as exc:  # what the thread raised is the verdict
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)  # daemon: a spinning one must not keep pytest up
    thread.start()
    thread.join(timeout=60)

    assert not thread.is_alive(), f"{action} still trying to take a lock that is a {in_the_way}"
    assert len(raised) == 1 and isinstance(raised[0], RegistryStoreFailed), raised
    assert str(store.uri_for(f"{REGISTER_LOCKS}/cola-v.json")) in str(raised[0])
    assert registry.registered_weights(registry.get("cola-v")) == lora_weights(1)


def test_the_cli_does_not_blame_the_store_being_away_for_a_folder_at_the_lock(tmp_path: Path) -> None:
    """`skuforge adapters remove` with a folder at the lock's path said "remove it", then "(the object
    store or Kafka could not be reached: check that it is up ... and try again)": a store that is up,
    and every try met the same folder."""
    adapters = FileStore(tmp_path / "adapters")
    AdapterRegistry(adapters).register(
        "cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15"
    )
    (adapters.root / REGISTER_LOCKS / "cola-v.json").mkdir(parents=True)
    env = {name: value for name, value in os.environ.items() if not name.startswith("SKUFORGE_")}
    env["SKUFORGE_DIFFUSION_ADAPTERS_URI"] = adapters.base_uri
    removing = subprocess.run(
        [sys.executable, "-m", "skuforge_cli", "adapters", "remove", "cola-v"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert removing.returncode == 1, removing.stderr
    assert "something that is no object stands there" in removing.stderr, removing.stderr
    assert "could not be reached" not in removing.stderr, removing.stderr


def test_the_cli_says_a_registration_whose_lock_was_taken_over_stopped_not_that_the_store_is_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge adapters register`, paused past REGISTER_LOCK_STALE_S and taken over, said "(the
    object store or Kafka could not be reached: check that it is up ... and try again)" of a store
    that was up: what stopped it was another registration."""
    adapters = FileStore(tmp_path / "adapters")
    weights = tmp_path / "cola.safetensors"
    weights.write_bytes(lora_weights(2))
    paused_at = f"cola-v/{weights_file_name(sha256_hex(lora_weights(2)))}"
    monkeypatch.setattr(adapters_module, "REGISTER_LOCK_STALE_S", 0.0)
    exists = FileStore.exists
    paused: list[str] = []

    def taken_over_meanwhile(store: FileStore, key: str) -> bool:
        if key == paused_at and not paused:
            paused.append(key)
            AdapterRegistry(adapters).register(
                "cola-v", lora_weights(3), kind="specialized", series="Cola", base_model="sd15"
            )
        return exists(store, key)

    monkeypatch.setattr(FileStore, "exists", taken_over_meanwhile)
    for name in [name for name in os.environ if name.startswith("SKUFORGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", adapters.base_uri)
    command = ["adapters", "register", "cola-v", str(weights)]
    command += ["--kind", "specialized", "--series", "Cola", "--base-model", "sd15"]

    status = skuforge_main(command)

    said = capsys.readouterr().err
    assert status == 1, said
    assert "which another registration took over meanwhile; published nothing" in said, said
    assert "could not be reached" not in said, said
