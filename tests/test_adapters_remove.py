"""``skuforge adapters remove``: an adapter that paints the wrong thing can be taken out.

Before, the registry could only add: an adapter trained on a wrong photo (or a withdrawn one) stayed
the series' newest and was chosen for every request until someone deleted files in the store by
hand. Now ``remove`` deletes its metadata first (no listing names it from then on), then its weights,
and a generator falls back to the next choice once it lists again.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from shared.errors import ObjectMissing
from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.adapters import backend_on, served_adapter
from tests.support.bus import file_store_uri
from tests.support.lora import lora_weights


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AdapterRegistry:
    monkeypatch.setenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", file_store_uri(tmp_path / "adapters"))
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    registry.register("shelf-general", lora_weights(1), kind="general", base_model="sd15")
    registry.register("cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15")
    registry.register("cola-v", lora_weights(3), kind="specialized", series="Cola", base_model="sd15")
    return registry


def test_a_removed_adapter_is_no_longer_chosen_and_its_weights_are_gone(
    registry: AdapterRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = backend_on(registry, tmp_path)
    assert served_adapter(backend) == "cola-v"
    (tmp_path / "adapters" / "cola-v" / "notes.txt").write_text("the operator's own file")

    assert cli_main(["adapters", "remove", "cola-v"]) == 0

    printed = json.loads(capsys.readouterr().out)
    assert printed["adapter_id"] == "cola-v" and printed["metadata"]["series"] == "Cola"
    assert [adapter.adapter_id for adapter in registry.list()] == ["shelf-general"]
    left = sorted(path.name for path in (tmp_path / "adapters" / "cola-v").iterdir())
    assert left == ["notes.txt"], "both registrations' weights go; files the registry did not write stay"
    # A generator still holding its listing serves from its cache until it lists again; then the
    # series falls back to the general adapter.
    backend.adapters(refresh=True)
    assert served_adapter(backend) == "shelf-general"


def test_removing_an_adapter_that_is_not_there_names_those_that_are(
    registry: AdapterRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["adapters", "remove", "cola-v2"]) == 2
    err = capsys.readouterr().err
    assert "no adapter 'cola-v2'" in err and "registered: cola-v, shelf-general" in err
    assert cli_main(["adapters", "remove", "../cola-v"]) == 2
    assert "not an adapter id" in capsys.readouterr().err
    assert len(registry.list()) == 2


def test_an_adapter_with_unreadable_metadata_can_be_removed(
    registry: AdapterRegistry, tmp_path: Path
) -> None:
    # Never listed (the registry skips it with a warning), so `remove` is the way to clear it.
    (tmp_path / "adapters" / "cola-v" / "metadata.json").write_text("{not json")
    assert [adapter.adapter_id for adapter in registry.list()] == ["shelf-general"]
    assert registry.remove("cola-v") is None
    assert list(registry.store.list_keys("cola-v/")) == []
    with pytest.raises(ObjectMissing):
        registry.remove("cola-v")


def test_a_folder_whose_metadata_names_another_adapter_is_not_registered_to_get_either(
    registry: AdapterRegistry, tmp_path: Path
) -> None:
    # A folder copied by hand keeps its source's metadata.json. list() skips it, but get() answered with
    # the metadata it holds (cola-v's), so get returned an adapter list says is not registered.
    shutil.copytree(tmp_path / "adapters" / "cola-v", tmp_path / "adapters" / "cola-copy")
    assert [adapter.adapter_id for adapter in registry.list()] == ["cola-v", "shelf-general"]
    with pytest.raises(ObjectMissing, match="names adapter 'cola-v'") as refused:
        registry.get("cola-copy")
    assert refused.value.reason == "object_missing"
    # Removed as any adapter never listed is, and the one it was copied from stays.
    assert registry.remove("cola-copy") is None
    assert not (tmp_path / "adapters" / "cola-copy" / "metadata.json").exists()
    assert registry.get("cola-v").adapter_id == "cola-v"


def test_weights_left_by_a_removal_cut_short_are_removed_and_said(
    registry: AdapterRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A removal killed (or taken over) between the metadata's delete and the weights' left them: the
    next removal found no metadata and said "no adapter", and nothing ever deleted the weights. It still
    says the adapter is not registered, and removes them, naming them."""
    (tmp_path / "adapters" / "cola-v" / "metadata.json").unlink()
    (tmp_path / "adapters" / "cola-v" / "notes.txt").write_text("the operator's own file")

    with caplog.at_level(logging.WARNING, logger="shared.generation.adapters"):
        assert cli_main(["adapters", "remove", "cola-v"]) == 2

    assert sorted(path.name for path in (tmp_path / "adapters" / "cola-v").iterdir()) == ["notes.txt"]
    assert "2 weights files" in caplog.text and "pytorch_lora_weights-" in caplog.text, caplog.text
