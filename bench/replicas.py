"""Several members of one consumer group as real processes, for ``bench/scale.py`` and the replica test
(tests/test_replicas.py imports them from here: a bench does not import the test tree).

A member is ``python -m skuforge_cli run <stage>`` with the caller's settings in its environment and its
own ``SKUFORGE_GROUP_INSTANCE_ID``, so it can be killed with SIGKILL like a crashed pod. Who holds
which partition is read from the broker (DescribeGroups), not from the members' own metrics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import CoordinatorNotAvailableError
from kafka.structs import TopicPartition

from devstack.broker import free_port
from schemas.common import SkuMetadata
from schemas.events import ImageGenerated
from shared import keys
from shared.bus import kafka_connection, kafka_connection_env
from shared.config import Settings
from shared.store import ObjectStore
from shared.synth import make_product, render_photo

REPO_ROOT = Path(__file__).resolve().parents[1]


def generated_images(
    store: ObjectStore, count: int, *, size_px: int = 256, tag: str = "r"
) -> list[ImageGenerated]:
    """``count`` image.generated payloads of rendered products, one SKU each (so they spread over partitions).

    The expected mask is the rendered product's own, so the gate has a real IoU to decide on.
    """
    payloads = []
    for index in range(count):
        photo = render_photo(make_product(index, seed=5), index % 4, seed=5 + index, size_px=size_px)
        sku_id, item_id = f"SKU-{tag}-{index:04d}", f"item-{tag}-{index:04d}"
        image = store.put_image(keys.generated_key(sku_id, item_id), photo.image)
        mask = store.put_image(keys.expected_mask_key(sku_id, item_id), photo.mask)
        payloads.append(
            ImageGenerated(
                item_id=item_id,
                sku=SkuMetadata(sku_id=sku_id, name=f"Product {index}", category="soda can"),
                reference_photo_id="p1",
                reference_image=image,
                reference_mask=mask,
                image=image,
                expected_mask=mask,
                backend="composite",
                model_id="synth",
                seed=index,
                variant_index=0,
            )
        )
    return payloads


def member_env(
    settings: Settings, *, instance_id: str | None, metrics_port: int, **extra: str
) -> dict[str, str]:
    """The environment of a member process: the caller's, then ``settings`` as ``SKUFORGE_*`` variables
    (its Kafka connection whole: a member given the bootstrap alone could not reach a secured cluster)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKUFORGE_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            **kafka_connection_env(settings),
            "SKUFORGE_TOPIC_NAMESPACE": settings.topic_namespace,
            "SKUFORGE_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
            "SKUFORGE_STORE_URI": settings.store_uri,
            "SKUFORGE_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
            "SKUFORGE_MAX_POLL_RECORDS": str(settings.max_poll_records),
            "SKUFORGE_METRICS_PORT": str(metrics_port),
            "SKUFORGE_LOG_FORMAT": "text",
            "SKUFORGE_LOG_LEVEL": "INFO",
        }
    )
    if instance_id is not None:
        env["SKUFORGE_GROUP_INSTANCE_ID"] = instance_id
    env.update(extra)
    return env


class Member:
    """One stage process in a consumer group; its log is ``<log_dir>/<instance_id>.log``."""

    def __init__(
        self,
        stage: str,
        settings: Settings,
        log_dir: Path,
        *,
        instance_id: str,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.stage = stage
        self.instance_id = instance_id
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{instance_id}.log"
        self._log = self.log_path.open("ab")
        self.started_at = time.time()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "skuforge_cli", "run", stage],
            cwd=REPO_ROOT,
            env=member_env(
                settings, instance_id=instance_id, metrics_port=self.metrics_port, **(extra_env or {})
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """SIGKILL: no commit, no leaving the group, like a crashed pod."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log.close()

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        """The end of the member's log, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def group_assignment(settings: Settings, group_id: str) -> dict[str, set[TopicPartition]]:
    """group_instance_id (or member_id) -> partitions it holds, as the group coordinator of
    ``settings``' cluster says (asked with its Kafka connection, security settings included).

    Empty while the group has no coordinator yet (a fresh broker creates its offsets topic on first use).
    """
    admin = KafkaAdminClient(**kafka_connection(settings), client_id="skuforge-tests-groups")
    try:
        description: dict[str, Any] = admin.describe_groups([group_id])[group_id]
    except CoordinatorNotAvailableError:
        return {}
    finally:
        admin.close()
    held: dict[str, set[TopicPartition]] = {}
    for member in description.get("members") or []:
        name = member.get("group_instance_id") or member["member_id"]
        assignment = member.get("member_assignment")
        partitions: set[TopicPartition] = set()
        # Decoded by kafka-python when there is one; empty (not yet assigned) while the group rebalances.
        if isinstance(assignment, dict):
            for entry in assignment.get("assigned_partitions") or []:
                partitions |= {TopicPartition(entry["topic"], p) for p in entry["partitions"]}
        elif hasattr(assignment, "partitions"):
            partitions = set(assignment.partitions())
        held[name] = partitions
    return held


def wait_until(predicate: Any, timeout_s: float, what: str, *, every_s: float = 0.25) -> None:
    """Poll ``predicate`` until true, else fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def count_records(settings: Settings, topics: list[str]) -> int:
    """How many records the topics of ``settings``' cluster hold (sum of end offsets; nothing is
    compacted or deleted here)."""
    consumer = KafkaConsumer(**kafka_connection(settings), group_id=None)
    try:
        partitions = [
            TopicPartition(topic, p) for topic in topics for p in consumer.partitions_for_topic(topic) or ()
        ]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()
