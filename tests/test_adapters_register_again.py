"""Registering an adapter's weights again, on the real stores: weights the registry already holds, as
they are, are not uploaded again (they run to hundreds of MB); damaged ones are. A registration waiting
for another's lock says so where `skuforge adapters register`'s user sees it."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.generation.adapters import REGISTER_LOCKS, AdapterRegistry, weights_file_name
from shared.store import FileStore, ObjectStore, sha256_hex
from tests.support.lora import lora_weights

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path / "adapters")
    s3_store: ObjectStore = request.getfixturevalue("s3_store")
    return s3_store


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
