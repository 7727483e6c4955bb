"""The console's mask upload refuses a TIFF of more pages than ingest takes, as ingest does, even where
its first page is the mask: before, the upload read page 0 and stored it while ingest refused the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin
from starlette.testclient import TestClient

from shared.images import MAX_TIFF_PAGES
from tests.support.console import app_for, build_console, flagged_item, login, pending_envelope


def _mask_first_of_too_many_pages(side: int) -> bytes:
    mask = np.zeros((side, side), dtype=np.uint8)
    mask[side // 4 : side * 3 // 4, side // 4 : side * 3 // 4] = 255
    tiny = Image.new("L", (1, 1))
    buffer = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buffer) as pages:
        for page, new_subfile_type in ((Image.fromarray(mask), 0), *[(tiny, 1)] * MAX_TIFF_PAGES):
            page.save(pages, "TIFF", tiffinfo={254: new_subfile_type})
            pages.newFrame()
    return buffer.getvalue()


def test_a_mask_tiff_of_more_pages_than_the_cap_is_refused_with_its_reason(tmp_path: Path) -> None:
    parts = build_console(tmp_path, lease_s=600.0)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0, sku_id="SKU-0")))
    task = parts.tasks.query()[0]
    side = task.pending.matted.generated.image.width
    client = TestClient(app_for(parts), base_url="http://console.test")
    headers = {"X-CSRF-Token": login(client)}
    assert client.post(f"/api/tasks/{task.task_id}/claim", headers=headers).status_code == 200
    response = client.post(
        f"/api/tasks/{task.task_id}/decision",
        data={"decision": "approve_edited"},
        files={"mask": ("mask.tiff", _mask_first_of_too_many_pages(side), "image/tiff")},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    assert "too_many_pages" in response.text and str(MAX_TIFF_PAGES) in response.text
    assert parts.tasks.counts()["claimed"] == 1  # the reviewer still holds it and can upload another
