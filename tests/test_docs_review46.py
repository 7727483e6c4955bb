"""Claims of the docs no docs test held yet (review 46).

- The Helm values the docs tell a user to set (`triton.modelCache.sizeLimit`, `stages.generator.env`,
  `secret.existingSecret`) were checked by nobody: a dotted name is no identifier for
  test_docs_review35's code-name check, and the chart tests render values of their own. A key renamed
  in values.yaml would have left docs/deploy.md telling a user to set one the chart ignores without a
  word (Helm takes any key).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.topics import ALL_TOPICS, PASSTHROUGH_OUT
from tests.support.docs import DOCS, ROOT

CHART_VALUES = ROOT / "deploy" / "helm" / "skuforge" / "values.yaml"
VALUES: dict[str, Any] = yaml.safe_load(CHART_VALUES.read_text(encoding="utf-8"))
DOC_IDS = [str(doc.relative_to(ROOT)) for doc in DOCS]

# Maps whose keys are the user's own (a variable, a resource, a label): any key below them is a value.
FREE_FORM = {"settings", "env", "values", "requests", "limits", "labels", "ruleLabels", "annotations"}
# A dotted name quoted in a doc that is no value though its first word is a top-level key: a topic
# (`image.generated.v1`, top-level `image`), a file (`triton.log`).
TOPIC_NAMES = {topic.name for topic in (*ALL_TOPICS, PASSTHROUGH_OUT)}
FILE_SUFFIXES = {"log", "json", "yaml", "yml", "md", "txt", "toml", "png", "onnx", "py"}
VALUE_PATH = re.compile(r"`([a-z][A-Za-z0-9]*(?:\.[A-Za-z0-9_-]+)+)(?:=[^`]*)?`")


def _is_value_name(path: str) -> bool:
    words = path.split(".")
    if words[0] not in VALUES or words[-1] in FILE_SUFFIXES:
        return False
    return not any(f"{name}.".startswith(f"{path}.") or path.startswith(f"{name}.") for name in TOPIC_NAMES)


def _resolves(path: str, values: Mapping[str, Any]) -> bool:
    """``path`` names a key of ``values``, or a key under one of its free-form maps; a stage's keys
    (``stages.matting.resources``) are its own overrides and ``stageDefaults``' keys."""
    node: Any = values
    words = path.split(".")
    for position, word in enumerate(words):
        if not isinstance(node, Mapping):
            return False
        if words[:position] == ["stages"] and word in node:
            node = {**values.get("stageDefaults", {}), **(node[word] or {})}
            continue
        if word not in node:
            return position > 0 and words[position - 1] in FREE_FORM
        node = node[word]
    return True


def helm_values_unknown_in(text: str, values: Mapping[str, Any] = VALUES) -> list[str]:
    """The Helm value names ``text`` quotes (``triton.shmSize``, ``secret.values.SKUFORGE_X``) that
    the chart's values.yaml does not have."""
    return [
        path
        for path in dict.fromkeys(VALUE_PATH.findall(text))
        if _is_value_name(path) and not _resolves(path, values)
    ]


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_helm_value_a_doc_names_is_in_the_chart(doc: Path) -> None:
    unknown = helm_values_unknown_in(doc.read_text(encoding="utf-8"))
    assert not unknown, f"{doc.relative_to(ROOT)} names Helm values the chart does not have: {unknown}"


def test_a_helm_value_the_chart_does_not_have_is_caught() -> None:
    text = (
        "Set `triton.modelCache.size` (was `sizeLimit`), `stages.matting.replica`, "
        "`console.persistence.size`, `stages.generator.env`, `settings.SKUFORGE_X=1`, "
        "`triton.resources.limits.ephemeral-storage`, "
        "`secret.values.SKUFORGE_CONSOLE_USERS`; not values: `image.generated.v1`, `triton.log`."
    )
    assert helm_values_unknown_in(text) == ["triton.modelCache.size", "stages.matting.replica"]
