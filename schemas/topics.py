"""The topic registry: each topic's versioned name and the one payload model it carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from schemas.events import (
    AdapterPublished,
    CorrectionPending,
    CorrectionResolved,
    GateAccepted,
    ImageGenerated,
    ImageMatted,
    SkuCaptioned,
    SkuIngested,
)

P = TypeVar("P", bound=BaseModel)

DLQ_SUFFIX = ".dlq"
# Kafka refuses a longer topic name (org.apache.kafka.common.internals.Topic.MAX_NAME_LENGTH).
KAFKA_TOPIC_NAME_MAX_LEN = 249


@dataclass(frozen=True)
class Topic(Generic[P]):
    """A topic name bound to its payload model and schema version."""

    schema_name: str
    version: int
    payload: type[P]

    @property
    def name(self) -> str:
        """The Kafka topic name; the version is part of it so a breaking change gets a new topic."""
        return f"{self.schema_name}.v{self.version}"


SKU_INGESTED = Topic("sku.ingested", 1, SkuIngested)
SKU_CAPTIONED = Topic("sku.captioned", 1, SkuCaptioned)
IMAGE_GENERATED = Topic("image.generated", 1, ImageGenerated)
IMAGE_MATTED = Topic("image.matted", 1, ImageMatted)
GATE_ACCEPTED = Topic("gate.accepted", 1, GateAccepted)
CORRECTION_PENDING = Topic("correction.pending", 1, CorrectionPending)
CORRECTION_RESOLVED = Topic("correction.resolved", 1, CorrectionResolved)
ADAPTER_PUBLISHED = Topic("adapter.published", 1, AdapterPublished)

# The output of the pass-through reference stage (``services/passthrough``); not in ALL_TOPICS.
PASSTHROUGH_OUT = Topic("passthrough.sku.ingested", 1, SkuIngested)

ALL_TOPICS: tuple[Topic[Any], ...] = (
    SKU_INGESTED,
    SKU_CAPTIONED,
    IMAGE_GENERATED,
    IMAGE_MATTED,
    GATE_ACCEPTED,
    CORRECTION_PENDING,
    CORRECTION_RESOLVED,
    ADAPTER_PUBLISHED,
)


def topic_by_name(name: str) -> Topic[Any]:
    """Look a topic up by its Kafka name; a clear error lists the known ones."""
    for topic in ALL_TOPICS:
        if topic.name == name:
            return topic
    known = ", ".join(t.name for t in ALL_TOPICS)
    raise KeyError(f"unknown topic {name!r}; known topics: {known}")


def longest_topic_name() -> str:
    """The longest bare name skuforge creates (a flow topic's, or the passthrough's, with ``.dlq``)."""
    return max((topic.name + DLQ_SUFFIX for topic in (*ALL_TOPICS, PASSTHROUGH_OUT)), key=len)
