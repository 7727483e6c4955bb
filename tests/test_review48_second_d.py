"""Second look at review 48's changes: what a user's values file had that the new schema must still take."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.helm import render, require_helm


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


@pytest.mark.parametrize("section", ["service", "persistence"])
def test_a_disabled_console_may_leave_its_sections_null(helm: str, tmp_path: Path, section: str) -> None:
    """`console: {enabled: false, persistence: null}` rendered (no template reads a disabled console's
    sections); the schema's `required` refused it with "missing property 'persistence'"."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"console": {"enabled": False, section: None}}))
    docs = render(helm, files=[values])
    assert not [doc for doc in docs if "console" in doc["metadata"]["name"] and doc["kind"] != "ConfigMap"]
