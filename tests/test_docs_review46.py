"""Claims of the docs no docs test held yet (review 46).

- The Helm values the docs tell a user to set (`triton.modelCache.sizeLimit`, `stages.generator.env`,
  `secret.existingSecret`) were checked by nobody: a dotted name is no identifier for
  test_docs_review35's code-name check, and the chart tests render values of their own. A key renamed
  in values.yaml would have left docs/deploy.md telling a user to set one the chart ignores without a
  word (Helm takes any key). So would the values files docs/deploy.md shows (my-values.yaml) and the
  keys of its `--set` flags.
"""

from __future__ import annotations

import functools
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
FREE_FORM = {
    "settings",
    "env",
    "values",
    "requests",
    "limits",
    "labels",
    "ruleLabels",
    "annotations",
    "nodeSelector",
}
# A dotted name quoted in a doc that is no value though its first word is a top-level key: a topic
# (`image.generated.v1`, top-level `image`), a file (`triton.log`).
TOPIC_NAMES = {topic.name for topic in (*ALL_TOPICS, PASSTHROUGH_OUT)}
FILE_SUFFIXES = {"log", "json", "yaml", "yml", "md", "txt", "toml", "png", "onnx", "py"}
# `triton.shmSize`, `settings.SKUFORGE_X=1`, and each of `--set a.b=1 --set c.d=2`.
VALUE_PATH = re.compile(r"(?:`|--set )([a-z][A-Za-z0-9]*(?:\.[A-Za-z0-9_-]+)+)(?=[=`])")


def _is_value_name(path: str) -> bool:
    words = path.split(".")
    if words[0] not in VALUES or words[-1] in FILE_SUFFIXES:
        return False
    return not any(f"{name}.".startswith(f"{path}.") or path.startswith(f"{name}.") for name in TOPIC_NAMES)


def _resolves(words: list[str], values: Mapping[str, Any]) -> bool:
    """The key path ``words`` names a key of ``values``, or a key under one of its free-form maps; a
    stage's keys (``stages.matting.resources``) are its own overrides and ``stageDefaults``' keys."""
    node: Any = values
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
        if _is_value_name(path) and not _resolves(path.split("."), values)
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
    flags = "`helm install ... --set secret.values.SKUFORGE_X=1 --set triton.envs.SKUFORGE_Y=s3://m`"
    assert helm_values_unknown_in(flags) == ["triton.envs.SKUFORGE_Y"]


def values_blocks(text: str) -> list[tuple[str, bool]]:
    """The YAML a doc shows, and whether it is said to be YAML: a fenced ``yaml`` block, or the text a
    block writes to a ``*values*.yaml`` file (``cat > my-values.yaml <<'EOF'`` ... ``EOF``); else a
    plain block that opens like YAML (``triton:``), which may be another format (a ``config.pbtxt``)."""
    blocks = []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        heredoc = r"^cat > \S*values\S*\.yaml <<'?(\w+)'?\n(.*?)^\1$"
        written = re.findall(heredoc, body, re.MULTILINE | re.DOTALL)
        blocks += [(content, True) for _, content in written]
        if language == "yaml" or (not written and re.match(r"[a-z]\w*:(\s|$)", body)):
            blocks.append((body, language == "yaml"))
    return blocks


def _key_paths(node: Any, above: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(node, Mapping) or not node:
        return [above]
    return [path for key, value in node.items() for path in _key_paths(value, (*above, str(key)))]


def values_block_keys_unknown(block: str, said_yaml: bool, values: Mapping[str, Any] = VALUES) -> list[str]:
    """The keys of a values file shown in a doc that the chart's values.yaml does not have."""
    try:
        shown = yaml.safe_load(block)
    except yaml.YAMLError:
        if said_yaml:
            raise
        return []  # not YAML after all
    if not isinstance(shown, Mapping) or not set(shown) & set(values):
        return []  # another YAML file (a compose file, a Prometheus rule)
    return [".".join(path) for path in _key_paths(shown) if not _resolves(list(path), values)]


def _values_keys_unknown_in(text: str) -> list[str]:
    return [
        key for block, said_yaml in values_blocks(text) for key in values_block_keys_unknown(block, said_yaml)
    ]


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_key_of_a_values_file_a_doc_shows_is_in_the_chart(doc: Path) -> None:
    """docs/deploy.md's values files (the GPU cluster's my-values.yaml, managed Kafka's, a CPU-only
    Triton's) were checked by nothing: Helm takes any key, so one misspelt or renamed would have been
    copied by a user into a file the chart ignores in part, without a word."""
    unknown = _values_keys_unknown_in(doc.read_text(encoding="utf-8"))
    assert not unknown, (
        f"{doc.relative_to(ROOT)} shows values files with keys the chart does not have: {unknown}"
    )


def test_a_values_file_key_the_chart_does_not_have_is_caught() -> None:
    doc = (
        "```\ncat > my-values.yaml <<'EOF'\nkafka: {bootstrap: k:9092}\n"
        "triton:\n  nodeSelector: {a.b/c: 'true'}\n  envs: {SKUFORGE_X: s3://m}\nEOF\n"
        "helm upgrade --install x . -f my-values.yaml\n```\n"
        "```yaml\nsettings:\n  SKUFORGE_Y: '1'\nstageDefaults:\n  autoscaling: {maxReplica: 12}\n```\n"
        "```\nservices:\n  kafka: {image: x}\n```\n```\nname: m\ndynamic_batching {\n  a: 1\n}\n```\n"
    )
    assert _values_keys_unknown_in(doc) == [
        "triton.envs.SKUFORGE_X",
        "stageDefaults.autoscaling.maxReplica",
    ]


# The rule files whose alerts docs/ops.md's table lists: the pipeline's (the chart's
# rules/skuforge.yml is a link to it) and the chart's own.
ALERT_RULE_FILES = ("deploy/prometheus/alerts.yml", "deploy/helm/skuforge/rules/deploy.yml")
ALERT_ROW = re.compile(r"^\| \[`(\w+)`\]\(#\w+\) \| `(\w+)` \| ([^|]+) \| ([^|]+) \|$", re.MULTILINE)
UNITS = {"s": "second", "m": "minute", "h": "hour"}


def _duration_words(duration: str) -> str:
    """A rule's ``for`` (``15m``, ``1h``) as the table says it (``15 minutes``, ``an hour``)."""
    count, unit = int(duration[:-1]), UNITS[duration[-1]]
    return f"an {unit}" if count == 1 and unit == "hour" else f"{count} {unit}{'s' * (count != 1)}"


def _raised_to_triton_startup() -> set[str]:
    """The alerts whose ``for`` the chart raises to ``triton.startupSeconds`` (templates/monitoring.yaml)."""
    template = (ROOT / "deploy/helm/skuforge/templates/monitoring.yaml").read_text(encoding="utf-8")
    found = re.search(r'has \(\$rule\.alert \| default ""\) \(list ((?:"\w+" ?)+)\)', template)
    assert found, "templates/monitoring.yaml no longer raises Triton's alerts' wait as this test reads it"
    return set(re.findall(r'"(\w+)"', found.group(1)))


def alert_table_misstated_in(ops: str) -> list[str]:
    """What docs/ops.md's alert table (alert, severity, how long it holds, rule file) says other than the
    rule files: an alert missing or extra, another severity or ``for``, another file."""
    rows = {name: (severity, held, where) for name, severity, held, where in ALERT_ROW.findall(ops)}
    raised = _raised_to_triton_startup()
    wrong = []
    rules = {}
    for path in ALERT_RULE_FILES:
        for group in yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))["groups"]:
            rules.update({rule["alert"]: (rule, path) for rule in group["rules"] if "alert" in rule})
    for name, (rule, path) in rules.items():
        if name not in rows:
            wrong.append(f"{name}: no row")
            continue
        severity, held, where = rows[name]
        if severity != rule["labels"]["severity"]:
            wrong.append(f"{name}: says {severity}, the rule {rule['labels']['severity']}")
        if not held.startswith(_duration_words(rule["for"])) or ("triton.startupSeconds" in held) != (
            name in raised
        ):
            wrong.append(f"{name}: says {held.strip()!r}, the rule's for is {rule['for']}")
        if f"`{path}`" not in where:
            wrong.append(f"{name}: says {where.strip()}, the rule is in {path}")
    return wrong + [f"{name}: no such alert" for name in rows if name not in rules]


def test_ops_gives_each_alerts_severity_and_wait_as_the_rules_have_them() -> None:
    """docs/ops.md said "Severity `page` wakes someone; `ticket` waits" but not which alert was which,
    nor how long each waits before it fires: an on-call reader had to read the rule files."""
    wrong = alert_table_misstated_in((ROOT / "docs" / "ops.md").read_text(encoding="utf-8"))
    assert not wrong, f"docs/ops.md's alert table differs from the rules: {wrong}"


def test_a_misstated_alert_row_is_caught() -> None:
    ops = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    planted = ops.replace(
        "| [`SkuforgeStageDown`](#skuforgestagedown) | `page` | 2 minutes |",
        "| [`SkuforgeStageDown`](#skuforgestagedown) | `ticket` | 5 minutes |",
    )
    planted = re.sub(r"^\| \[`SkuforgeUnkeyedEvents`\].*\n", "", planted, flags=re.MULTILINE)
    planted = planted.replace("| 15 minutes, or `triton.startupSeconds` when longer |", "| 15 minutes |")
    assert alert_table_misstated_in(planted) == [
        "SkuforgeStageDown: says ticket, the rule page",
        "SkuforgeStageDown: says '5 minutes', the rule's for is 2m",
        "SkuforgeUnkeyedEvents: no row",
        "SkuforgeTritonPodsUnavailable: says '15 minutes', the rule's for is 15m",
    ]


def manifest_fields_unknown_in(architecture: str) -> list[str]:
    """The row fields docs/architecture.md's store layout lists for a manifest line (``a row per ...:
    image, mask, ...``) that a manifest row (``ManifestRow``) does not have."""
    from shared.trainstore.manifest import ManifestRow

    layout = architecture.split("\n## Retraining store layout\n", 1)[1].split("```", 2)[1]
    listed = re.search(r"/manifests/\S+\s+[^:\n]*: (.*?)(?:, \.\.\.|\n\S)", layout, re.DOTALL)
    assert listed, "docs/architecture.md's store layout no longer lists a manifest row's fields"
    fields = [field.strip() for field in listed.group(1).split(",")]
    return [field for field in fields if field not in ManifestRow.model_fields]


def test_the_architectures_manifest_line_names_the_rows_own_fields() -> None:
    """docs/architecture.md gave a manifest line as "uri, mask, caption, source, iou, reviewed_by, adapter,
    seed": a row has no ``uri`` (its image's key is ``image``) and no ``adapter`` (``adapter_id``), so a
    trainer reading the manifests from that map looked for two fields that are not there."""
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    unknown = manifest_fields_unknown_in(architecture)
    assert not unknown, f"docs/architecture.md names manifest fields a row does not have: {unknown}"


def test_a_manifest_field_a_row_does_not_have_is_caught() -> None:
    layout = (
        "\n## Retraining store layout\n\n```\n<root>/manifests/<sku_id>/part-d-*.jsonl   a row per item: "
        "image, mask, url,\n        adapter_id, seed, ...\n```\n"
    )
    assert manifest_fields_unknown_in(layout) == ["url"]


# A series a doc quotes with its labels: `skuforge_dlq_total{reason}`,
# `skuforge_lora_jobs_total{outcome="failed"}`.
SERIES = re.compile(r"\b((?:skuforge|nv)_[a-z0-9_]*[a-z0-9])\{([^}`]*)\}")
CODE_TEXT = "\n".join(
    path.read_text(encoding="utf-8")
    for folder in ("schemas", "shared", "services", "devstack")
    for path in sorted((ROOT / folder).rglob("*.py"))
)


@functools.cache
def _metric_labels() -> dict[str, tuple[str, ...]]:
    from devstack.metrics_doc import catalogue

    return {doc.name: doc.labels for doc in catalogue()}


def series_misstated_in(text: str, code: str = CODE_TEXT) -> list[str]:
    """Labels ``text`` gives a metric that it does not have, and label values of ours no code sets
    (a value is a string the code writes, or an exception class's name: ``error="StoreMisconfigured"``)."""
    labels_of = _metric_labels()
    wrong = []
    for name, selector in dict.fromkeys(SERIES.findall(text)):
        labels = labels_of.get(re.sub(r"_(bucket|count|sum)$", "", name), labels_of.get(name))
        if labels is None:
            continue  # no metric at all: test_docs_review35's check
        for matcher in filter(None, (part.strip() for part in selector.split(","))):
            parts = re.fullmatch(r"(\w*)\s*(=~|!~|!=|=)?\s*(.*)", matcher)
            assert parts, matcher  # every part of the pattern may be empty
            label, operator, value = parts.groups()
            value = "" if operator in ("=~", "!~") else value.strip('"')  # a regex: not one value
            if label not in labels:
                wrong.append(f"{name}{{{selector}}}: no label {label!r} (it has {', '.join(labels)})")
            elif (
                value
                and value != "..."
                and name.startswith("skuforge_")
                and not re.search(rf"[\"']{re.escape(value)}[\"']|class {re.escape(value)}\b", code)
            ):
                wrong.append(f"{name}{{{selector}}}: no code sets {label}={value!r}")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_label_a_doc_gives_a_metric_is_its_own(doc: Path) -> None:
    """The docs quote series with their labels (`skuforge_retries_total{error="StoreMisconfigured"}`) for
    a reader to paste into Prometheus; only the metric's name was checked, so a renamed label or a value
    no code sets would have left a query that matches nothing, without a word."""
    wrong = series_misstated_in(doc.read_text(encoding="utf-8"))
    assert not wrong, f"{doc.relative_to(ROOT)} quotes series that match nothing: {wrong}"


def test_a_label_or_value_a_metric_does_not_have_is_caught() -> None:
    text = (
        '`skuforge_lora_jobs_total{outcome="failed"}`, `skuforge_dlq_total{reason}`, '
        '`skuforge_retries_total{stage="...", error="StoreMisconfigured"}`, '
        '`skuforge_gate_flags_total{flag}`, `skuforge_lora_jobs_total{outcome="exploded"}`, '
        '`skuforge_messages_total{outcome!="retry"}`, `skuforge_triton_errors_total{kind=~"timeout|other"}`'
    )
    assert series_misstated_in(text) == [
        "skuforge_gate_flags_total{flag}: no label 'flag' (it has reason)",
        "skuforge_lora_jobs_total{outcome=\"exploded\"}: no code sets outcome='exploded'",
    ]


DEPLOY_VALUES_FILES = [
    block
    for block, _ in values_blocks((ROOT / "docs" / "deploy.md").read_text(encoding="utf-8"))
    if values_block_keys_unknown(block, said_yaml=False) == []
    and set(yaml.safe_load(block) or {}) & set(VALUES)
]


@pytest.mark.parametrize(
    "block", DEPLOY_VALUES_FILES, ids=[block.split(":")[0] for block in DEPLOY_VALUES_FILES]
)
def test_a_values_file_docs_deploy_shows_renders(block: str, tmp_path: Path) -> None:
    """Keys the chart has may still hold values its render refuses (a port, a whole number, a backend
    Triton does not serve): each values file docs/deploy.md shows renders with a real helm, with a
    reviewer and a model given as the rest of the page says."""
    from tests.support.helm import render, require_helm

    values_file = tmp_path / "values.yaml"
    values_file.write_text(block, encoding="utf-8")
    assert render(require_helm(), files=[values_file])
