"""The flow, written once: every service, the topics it consumes and produces, and its metrics port.

``skuforge run NAME`` and ``skuforge serve NAME`` find a service's module here; ``skuforge up`` starts
``PIPELINE`` in this order and waits until each holds partitions of what it consumes; ``skuforge demo``
follows the topics of the stages that produce; each stage module takes its name and default metrics
port from its entry; docs/architecture.md carries ``flow_table_markdown()`` (``skuforge flow
--markdown``), and a test keeps it current. Module paths are strings, so reading the flow imports no
service (and no model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from schemas.topics import (
    ADAPTER_PUBLISHED,
    CORRECTION_PENDING,
    CORRECTION_RESOLVED,
    GATE_ACCEPTED,
    IMAGE_GENERATED,
    IMAGE_MATTED,
    PASSTHROUGH_OUT,
    SKU_CAPTIONED,
    SKU_INGESTED,
    Topic,
)


@dataclass(frozen=True)
class Service:
    """One box of the flow.

    ``command`` says how it starts: ``run`` (``skuforge run NAME``: the module's ``main() -> int``, a
    stage on the shared runtime whose consumer group is ``<prefix>.<name>``) or ``serve``
    (``skuforge serve NAME``: the module's ``main(argv) -> int``, an HTTP server). ``metrics_port`` is
    the default port of its own ``/metrics``, ``/healthz`` and ``/readyz``, serving its
    prometheus_client metrics (``SKUFORGE_METRICS_PORT`` overrides it); every service has one. The
    generator server serves Triton's own ``nv_*`` metrics besides, on a port of Triton's
    (``SKUFORGE_GENERATION_SERVER_METRICS_PORT``).
    """

    name: str
    module: str
    consumes: tuple[Topic[Any], ...] = ()
    produces: tuple[Topic[Any], ...] = ()
    metrics_port: int | None = None
    command: Literal["run", "serve"] = "run"

    @property
    def default_metrics_port(self) -> int:
        """``metrics_port``; a ValueError for a service declared without one."""
        if self.metrics_port is None:
            raise ValueError(f"{self.name} declares no metrics port: give its Service one in schemas/flow.py")
        return self.metrics_port


CAPTIONER = Service("captioner", "services.captioner.stage", (SKU_INGESTED,), (SKU_CAPTIONED,), 9102)
GENERATOR = Service("generator", "services.generator.stage", (SKU_CAPTIONED,), (IMAGE_GENERATED,), 9104)
MATTING = Service("matting", "services.matting.stage", (IMAGE_GENERATED,), (IMAGE_MATTED,), 9103)
GATE = Service("gate", "services.gate.stage", (IMAGE_MATTED,), (GATE_ACCEPTED, CORRECTION_PENDING), 9105)
TRAINSTORE = Service(
    "trainstore",
    "services.trainstore.stage",
    (GATE_ACCEPTED, CORRECTION_RESOLVED, CORRECTION_PENDING, SKU_CAPTIONED),
    (),
    9106,
)
# Trains LoRA adapters for the diffusion backend; off in `skuforge up` on CPU unless --with-trainer.
LORA_TRAINER = Service(
    "lora-trainer",
    "services.lora_trainer.stage",
    (SKU_CAPTIONED, GATE_ACCEPTED),
    (ADAPTER_PUBLISHED,),
    9108,
)
# The console's intake alone (``skuforge run console-intake``), beside a console serving with
# SKUFORGE_CONSOLE_INTAKE=false; inside ``serve console`` the same stage runs as a thread.
CONSOLE_INTAKE = Service(
    "console-intake", "services.console.intake", (CORRECTION_PENDING, GATE_ACCEPTED), (), 9107
)
# The runtime's reference stage: a deployment smoke test and the bus benchmark; not in the pipeline.
PASSTHROUGH = Service("passthrough", "services.passthrough.stage", (SKU_INGESTED,), (PASSTHROUGH_OUT,), 9190)

# HTTP servers. The console's /metrics are its intake's; it publishes decisions from its outbox.
CONSOLE = Service(
    "console",
    "services.console.server",
    (CORRECTION_PENDING, GATE_ACCEPTED),
    (CORRECTION_RESOLVED,),
    CONSOLE_INTAKE.metrics_port,
    command="serve",
)
# Triton with the generation model; Triton's own ports (HTTP, gRPC, nv_* metrics) are
# SKUFORGE_GENERATION_SERVER_*. Its metrics port here is the process's own /metrics (what the server
# counts in Python, such as scene-library files skipped at load).
TRITON = Service("generator", "services.generator.server", metrics_port=9109, command="serve")

# The stages of the pipeline in flow order: what `skuforge up` starts (after Kafka and Triton, before
# the console).
PIPELINE: tuple[Service, ...] = (CAPTIONER, GENERATOR, MATTING, GATE, TRAINSTORE)
# `skuforge run NAME` and `skuforge serve NAME`.
STAGES: dict[str, Service] = {
    service.name: service for service in (*PIPELINE, LORA_TRAINER, CONSOLE_INTAKE, PASSTHROUGH)
}
SERVERS: dict[str, Service] = {service.name: service for service in (CONSOLE, TRITON)}


def flow_table_markdown() -> str:
    """The flow as a markdown table (docs/architecture.md carries it; ``skuforge flow --markdown``)."""
    rows = ["| service | consumes | produces | metrics port |", "| --- | --- | --- | --- |"]

    def names(topics: tuple[Topic[Any], ...]) -> str:
        return ", ".join(f"`{topic.name}`" for topic in topics) or "—"

    for service in (*PIPELINE, LORA_TRAINER, CONSOLE, CONSOLE_INTAKE, TRITON, PASSTHROUGH):
        command = f"`skuforge {service.command} {service.name}`"
        port = "—" if service.metrics_port is None else str(service.metrics_port)
        if service is TRITON:
            port += ", and Triton's own"
        rows.append(f"| {command} | {names(service.consumes)} | {names(service.produces)} | {port} |")
    return "\n".join(rows)


def flow_document() -> dict[str, Any]:
    """The flow as data for deployment tools: the Helm chart reads it (``skuforge flow --json``).

    ``stages`` are the pipeline's stages in flow order, each a consumer group ``<prefix>.<name>``;
    topic names are bare (the chart adds its topic namespace).
    """

    def entry(service: Service) -> dict[str, Any]:
        return {
            "name": service.name,
            "command": service.command,
            "consumes": [topic.name for topic in service.consumes],
            "produces": [topic.name for topic in service.produces],
            "metricsPort": service.metrics_port,
        }

    return {
        "stages": [entry(stage) for stage in PIPELINE],
        "console": entry(CONSOLE),
        "triton": entry(TRITON),
    }
