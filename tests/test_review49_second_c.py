"""Review 49, second opinion: what today's commits left open in the console's commands' hint to the
local stack and in the chart's empty list taken as an empty map.

The console tests run in their own folder (``monkeypatch.chdir(tmp_path)``): the repository's ``var/`` is
never written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.up import read_state
from services.console.tasks import TaskStore
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.console import flagged_item, pending_envelope
from tests.support.helm import render, require_helm

DEFAULT_HINT = "SKUFORGE_CONSOLE_DB_PATH=var/up/console/tasks.sqlite3 SKUFORGE_STORE_URI=file://var/up/store"


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``tmp_path`` as the current folder, holding a local stack's task table and store at their
    defaults (``var/up/``); its ``stack.json`` is each test's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKUFORGE_CONSOLE_DB_PATH", raising=False)
    monkeypatch.delenv("SKUFORGE_STORE_URI", raising=False)
    store = FileStore(tmp_path / "var" / "up" / "store")
    TaskStore(tmp_path / "var" / "up" / "console" / "tasks.sqlite3").add_pending(
        pending_envelope(flagged_item(store, 0))
    )
    return tmp_path / "var" / "up" / "stack.json"


def test_a_stack_json_nested_too_deeply_leaves_the_hint_to_the_defaults(
    stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """json.loads refuses nesting deeper than Python's stack with a RecursionError, no ValueError: the
    refusal of a command without a table ended in a traceback instead of naming the table."""
    stack.write_text("[" * 100_000)
    assert cli_main(["console", "export-labelstudio", "--out", "tasks.json"]) == 2
    err = capsys.readouterr().err
    assert "no task table at" in err and DEFAULT_HINT in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "console_db",
    ["x" * 300, "/" + "deep/" * 1000 + "tasks.sqlite3"],
    ids=["name_too_long", "path_too_long"],
)
def test_a_stack_json_naming_a_path_the_system_refuses_gives_no_hint(
    stack: Path, capsys: pytest.CaptureFixture[str], console_db: str
) -> None:
    """Path.is_file raises for a name or path longer than the system takes (ENAMETOOLONG): a stack.json
    naming one (it is a file anyone may edit) ended the refusal in a traceback. There is no table there,
    so no hint to it."""
    stack.write_text(json.dumps({"console_db": console_db, "store_uri": "file://var/up/store"}))
    assert cli_main(["console", "refused"]) == 2
    err = capsys.readouterr().err
    assert "no task table at" in err
    assert "SKUFORGE_CONSOLE_DB_PATH=" not in err.split("; set SKUFORGE_CONSOLE_DB_PATH", 1)[1]


# A stage's pod placement the chart layers: stageDefaults' map, then the stage's own keys over it.
PLACEMENT: dict[str, Any] = {
    "nodeSelector": {"disk": "ssd"},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    },
}


def _gate_pod(helm: str, folder: Path, name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The gate Deployment's pod spec rendered with ``values`` (a values file named ``name``)."""
    file = folder / name
    file.write_text(yaml.safe_dump(values))
    (deployed,) = [
        doc
        for doc in render(helm, files=[file])
        if doc["kind"] == "Deployment" and doc["metadata"]["name"].endswith("-gate")
    ]
    pod: dict[str, Any] = deployed["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("key", sorted(PLACEMENT))
def test_a_stages_empty_list_keeps_the_default_placement_as_the_empty_map_does(
    tmp_path: Path, key: str
) -> None:
    """`stages.gate.nodeSelector: []` is taken as none, "rendering as {} does" (docs/deploy.md); but where
    stageDefaults gives a nodeSelector or an affinity, `{}` kept it and `[]` dropped it, silently: the gate
    scheduled on any node."""
    helm = require_helm()
    defaults = {"stageDefaults": {key: PLACEMENT[key]}}
    as_map = _gate_pod(helm, tmp_path, "map.yaml", defaults | {"stages": {"gate": {key: {}}}})
    as_list = _gate_pod(helm, tmp_path, "list.yaml", defaults | {"stages": {"gate": {key: []}}})
    assert as_map[key] == PLACEMENT[key]
    assert as_list == as_map


@pytest.mark.parametrize("key", sorted(PLACEMENT))
def test_an_empty_default_list_leaves_a_stages_own_placement_as_the_empty_map_does(
    tmp_path: Path, key: str
) -> None:
    helm = require_helm()
    own = {"stages": {"gate": {key: PLACEMENT[key]}}}
    as_map = _gate_pod(helm, tmp_path, "map.yaml", own | {"stageDefaults": {key: {}}})
    as_list = _gate_pod(helm, tmp_path, "list.yaml", own | {"stageDefaults": {key: []}})
    assert as_map[key] == PLACEMENT[key]
    assert as_list == as_map


def test_skuforge_ups_own_read_of_a_stack_json_nested_too_deeply_is_no_stack(tmp_path: Path) -> None:
    """The twin of the hint's read: ``devstack.up.read_state`` (``skuforge up``, ``down``, the demo) let
    json.loads' RecursionError out of a damaged stack.json, a traceback where a damaged file is no stack."""
    (tmp_path / "stack.json").write_text("[" * 100_000)
    assert read_state(tmp_path) is None
