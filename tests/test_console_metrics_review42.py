"""The console's own store writes are counted on its /metrics with its intake turned off too.

docs/ops.md says the console's writes (edited masks) count under ``console-intake``, and
SkuforgeStoreWriteFailures reads them there. Only the intake's runtime set the store's write hook: with
``SKUFORGE_CONSOLE_INTAKE=false`` (the intake run alone, ``skuforge run console-intake``) no /metrics
timed or counted them, and a console failing every mask upload paged nothing.
"""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from schemas.flow import CONSOLE_INTAKE
from services.console.config import ConsoleSettings
from services.console.server import ConsoleService
from shared.store import FileStore
from tests.support.bus import isolated_settings
from tests.support.console import USERS, claim, decide, flagged_item, login, pending_envelope


def _scraped(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the console's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_an_edited_mask_written_by_a_console_without_its_intake_is_counted_on_its_metrics(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path / "store")
    pending = pending_envelope(flagged_item(store, 0))
    service = ConsoleService(
        isolated_settings("127.0.0.1:9", store.base_uri),
        ConsoleSettings(
            console_users=USERS,
            console_db_path=str(tmp_path / "console.sqlite3"),
            console_metrics_port=0,
            console_intake=False,
        ),
        store=store,
    )
    service.tasks.add_pending(pending)
    size = (pending.payload.matted.generated.image.width, pending.payload.matted.generated.image.height)
    mask = np.zeros(size[::-1], dtype=np.uint8)
    mask[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "PNG")
    stage = (("stage", CONSOLE_INTAKE.name),)
    service.health.start()
    try:
        before = _scraped(service.health.port)
        client = TestClient(service.app, base_url="http://console.test")
        token = login(client)
        claim(client, token, pending.event_id)
        response = decide(client, token, pending.event_id, decision="approve_edited", mask=buffer.getvalue())
        assert response.status_code == 200, response.text
        after = _scraped(service.health.port)
    finally:
        service.health.stop()
    # Served from the start at 0, so increase() sees the first failure; the mask written is timed.
    assert before[("skuforge_store_write_failures_total", stage)] == 0
    assert before[("skuforge_store_write_seconds_count", stage)] == 0
    assert after[("skuforge_store_write_seconds_count", stage)] == 1
