"""Every skuforge metric, read from the classes that define them, for docs/ops.md and the dashboard check.

The table in docs/ops.md is :func:`metrics_table_markdown` (``skuforge prometheus metrics``), and a
test keeps it current, so it cannot drift from the code; the dashboard test checks that every metric
a panel queries is in :func:`catalogue` (or is one of Triton's own, :data:`TRITON_METRICS`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

# Triton's own /metrics (Triton Inference Server docs, "Metrics") that the rules and dashboard use.
TRITON_METRICS: dict[str, tuple[str, str]] = {
    "nv_inference_request_success": ("counter", "successful inference requests, by model and version"),
    "nv_inference_request_failure": (
        "counter",
        "failed inference requests, by model, version and reason (REJECTED, BACKEND, CANCELED, OTHER)",
    ),
    "nv_inference_count": ("counter", "inferences performed (a batch of 4 counts 4)"),
    "nv_inference_exec_count": (
        "counter",
        "model executions (a batch counts 1): count / exec_count = batch size",
    ),
    "nv_inference_queue_duration_us": ("counter", "cumulative microseconds requests waited in the queue"),
    "nv_inference_pending_request_count": ("gauge", "requests waiting in the queue now"),
}

# Labels beyond model and version, as Triton 2.51 (nvidia-pytriton 0.7) exports them: a rule that adds
# the failure counter to the success counter without `sum by (model)` first matches no series.
TRITON_EXTRA_LABELS: dict[str, tuple[str, ...]] = {"nv_inference_request_failure": ("reason",)}

# Labels the exposition format adds to a family's own series (a bucket's bound, a quantile), not labels a
# user selects by: a Histogram wrapper's _labelnames leave them out, so a collector's family must too.
_SERIES_LABELS: dict[str, frozenset[str]] = {
    "histogram": frozenset({"le"}),
    "gaugehistogram": frozenset({"le"}),
    "summary": frozenset({"quantile"}),
}


@dataclass(frozen=True)
class MetricDoc:
    """One metric family as /metrics exposes it."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    services: str


def registry_metrics(registry: CollectorRegistry) -> Iterator[tuple[str, str, tuple[str, ...], str]]:
    """Each metric family ``registry`` exposes: its name as /metrics shows it, type, labels and help."""
    collectors = list(dict.fromkeys(registry._collector_to_names))  # no public listing of collectors
    for collector in collectors:
        if isinstance(collector, MetricWrapperBase):
            kind = str(collector._type)
            name = collector._name + ("_total" if kind == "counter" else "")
            yield name, kind, tuple(collector._labelnames), collector._documentation
        else:
            for family in collector.collect():
                # The labels the family declares (CounterMetricFamily(labels=...)), then any its samples
                # add: a labelled family with no sample yet (an empty table) was documented with none.
                declared = tuple(getattr(family, "_labelnames", ()))
                own = _SERIES_LABELS.get(family.type, frozenset())
                sampled = (key for sample in family.samples for key in sample.labels if key not in own)
                labels = tuple(dict.fromkeys([*declared, *sampled]))
                # A counter family is named without its _total, as the Counter wrappers above.
                name = family.name + ("_total" if family.type == "counter" else "")
                yield name, family.type, labels, family.documentation


@contextmanager
def service_registries() -> Iterator[dict[str, CollectorRegistry]]:
    """Who serves what → a registry holding those metrics, built from the classes that define them.

    The console's collector reads a task table, so it gets an empty one in a temporary directory for
    the duration of the block.
    """
    from devstack.prometheus import GENERATOR_SERVER_JOB
    from services.console.metrics import ConsoleMetrics
    from services.console.tasks import TaskStore
    from services.gate.stage import GateMetrics
    from services.generator.stage import GeneratorMetrics
    from services.lora_trainer.stage import LoraTrainerMetrics
    from services.matting.stage import MattingMetrics
    from services.trainstore.stage import TrainstoreMetrics
    from shared.generation.scenes import SCENES_SKIPPED
    from shared.observability import StageMetrics
    from shared.runtime import loading_registry

    registries = {"every stage and the console": StageMetrics("any").registry}
    # Served on the stage's port while it opens its models (run_stage_loading), before the above.
    registries["captioner, generator, matting (loading)"] = loading_registry("any")
    for services, metrics_class in (
        ("generator", GeneratorMetrics),
        ("matting", MattingMetrics),
        ("gate", GateMetrics),
        ("trainstore", TrainstoreMetrics),
        ("lora-trainer", LoraTrainerMetrics),
    ):
        registry = CollectorRegistry()
        metrics_class(registry)
        registries[services] = registry
    # `skuforge serve generator`'s own /metrics: prometheus_client's default registry, where the scene
    # library (loaded in that process) counts the files it skips.
    server = CollectorRegistry()
    server.register(SCENES_SKIPPED)
    registries[GENERATOR_SERVER_JOB] = server
    with tempfile.TemporaryDirectory() as workdir:
        registries["console"] = ConsoleMetrics(TaskStore(Path(workdir) / "tasks.sqlite3")).registry
        yield registries


def catalogue() -> list[MetricDoc]:
    """Every metric of every service, in the order a reader meets them: the runtime's, then per service."""
    docs: list[MetricDoc] = []
    with service_registries() as registries:
        for services, registry in registries.items():
            for name, kind, labels, text in registry_metrics(registry):
                docs.append(MetricDoc(name, kind, labels, text, services))
    for name, (kind, text) in TRITON_METRICS.items():
        labels = ("model", "version", *TRITON_EXTRA_LABELS.get(name, ()))
        docs.append(MetricDoc(name, kind, labels, text, "triton"))
    return docs


def metrics_table_markdown() -> str:
    """The metrics as a markdown table (docs/ops.md carries it)."""
    rows = ["| metric | type | labels | served by | meaning |", "| --- | --- | --- | --- | --- |"]
    for doc in catalogue():
        labels = ", ".join(f"`{label}`" for label in doc.labels) or "—"
        rows.append(f"| `{doc.name}` | {doc.type} | {labels} | {doc.services} | {doc.help} |")
    return "\n".join(rows)
