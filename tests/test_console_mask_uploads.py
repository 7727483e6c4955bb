"""An edited mask uploaded from another tool is read as the reviewer meant it, or refused with why.

White marks the product; a cut-out is read by its transparency, a 0/1 label mask (or an index-1
palette mask, VOC's void index 255 as background) by its labels; a mask that marks nothing, or
everything, is refused (a 422), since it would go to the retraining store as an ``approved`` item
with a mask that teaches nothing true.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, TiffImagePlugin
from starlette.testclient import TestClient

from services.console.auth import FORM_OVERHEAD_BYTES
from services.console.decisions import mask_from_ref
from shared.config import load_settings
from tests.support.console import ConsoleParts, app_for, build_console, flagged_item, login, pending_envelope

SIDE = 128


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def product() -> npt.NDArray[np.bool_]:
    inside = np.zeros((SIDE, SIDE), dtype=bool)
    inside[40:80, 30:90] = True
    return inside


def label_mask() -> bytes:
    return png(Image.fromarray(product().astype(np.uint8)))


def voc_palette_mask() -> bytes:
    image = Image.fromarray(product().astype(np.uint8), "P")
    image.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # VOC: class 1 is dark red
    return png(image)


def voc_palette_mask_with_void_border() -> bytes:
    """PASCAL VOC's own files: class 1 inside, index 255 (the "void" colour, light beige) on a band
    along the object's edge. Read by brightness, the band alone was stored as the product."""
    labels = product().astype(np.uint8)
    grown = np.zeros_like(product())
    grown[38:82, 28:92] = True
    labels[grown & ~product()] = 255
    image = Image.fromarray(labels, "P")
    palette = [0, 0, 0, 128, 0, 0] + [0] * 759 + [224, 224, 192]
    image.putpalette(palette)
    return png(image)


def cut_out() -> bytes:
    rgba = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # hidden colour of the transparent pixels
    rgba[product()] = (200, 30, 30, 255)  # a dark red product, opaque
    return png(Image.fromarray(rgba, "RGBA"))


def white_on_black() -> bytes:
    return png(Image.fromarray(np.where(product(), 255, 0).astype(np.uint8)))


@pytest.fixture
def parts(tmp_path: Path) -> ConsoleParts:
    parts = build_console(tmp_path, lease_s=600.0)
    for index in range(2):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index, sku_id=f"SKU-{index}")))
        parts.clock.advance(1.0)
    assert parts.tasks.query()[0].pending.matted.generated.image.width == SIDE
    return parts


def upload(parts: ConsoleParts, data: bytes) -> tuple[int, str, npt.NDArray[np.uint8] | None]:
    """Claim the oldest task and approve it with ``data``; (status, detail, stored mask)."""
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    task = parts.tasks.query()[0]
    headers = {"X-CSRF-Token": token}
    assert client.post(f"/api/tasks/{task.task_id}/claim", headers=headers).status_code == 200
    response = client.post(
        f"/api/tasks/{task.task_id}/decision",
        data={"decision": "approve_edited"},
        files={"mask": ("mask.png", data, "image/png")},
        headers=headers,
    )
    if response.status_code != 200:
        return response.status_code, response.json()["detail"], None
    outbox = parts.tasks.outbox(task.task_id)
    assert outbox is not None and outbox.payload.final_mask is not None
    return 200, "", mask_from_ref(parts.store, outbox.payload.final_mask)


def with_broken_exif(data: bytes) -> bytes:
    """The PNG with an eXIf chunk that is no TIFF block (a 500 before: decode_mask skipped it, the
    console's second reading of the file did not)."""
    body = b"garbage!"
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    after_header = 8 + 25  # the signature, then IHDR
    return data[:after_header] + chunk + data[after_header:]


def sixteen_bit(value: int) -> bytes:
    """A 16-bit greyscale mask with ``value`` on the product: 65535 is full-scale white, and 255 is what
    OpenCV or numpy write when an 8-bit mask is saved as uint16 (read as 255/65535, it marked nothing)."""
    return png(Image.fromarray(np.where(product(), value, 0).astype(np.uint16)))


def white_on_black_partly_erased() -> bytes:
    """A white-on-black mask with a band erased to transparent (an editor's eraser): before, any
    transparency made the alpha the mask, and the opaque black background counted as product."""
    rgba = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[product()] = (255, 255, 255, 255)
    rgba[:10, :, 3] = 0
    return png(Image.fromarray(rgba, "RGBA"))


def premultiplied_grey_cut_out() -> bytes:
    """A grey + alpha TIFF whose ExtraSamples says associated alpha (Pillow's "La"), transparent
    around the product: decode_mask read it, then its opaque pixels' colour check was a 500."""
    grey = np.full((SIDE, SIDE), 200, dtype=np.uint8)
    alpha = np.where(product(), 255, 0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    entry = data.find(struct.pack("<HHI", 338, 3, 1))  # ExtraSamples, SHORT, 1 value
    data[entry + 8] = 1  # associated alpha
    assert Image.open(io.BytesIO(bytes(data))).mode == "La"
    return bytes(data)


def cut_out_tiff_after_its_preview() -> bytes:
    """A cut-out TIFF whose first page is a reduced-size preview (NewSubfileType 1): it was read by the
    preview, and refused as the wrong size."""
    cut = Image.open(io.BytesIO(cut_out()))
    buffer = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buffer) as pages:
        for page, new_subfile_type in ((cut.resize((SIDE // 4, SIDE // 4)), 1), (cut, 0)):
            page.save(pages, "TIFF", tiffinfo={254: new_subfile_type})
            pages.newFrame()
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        premultiplied_grey_cut_out(),
        white_on_black(),
        label_mask(),
        voc_palette_mask(),
        voc_palette_mask_with_void_border(),
        cut_out(),
        with_broken_exif(white_on_black()),
        with_broken_exif(cut_out()),
        white_on_black_partly_erased(),
        sixteen_bit(65535),
        sixteen_bit(255),
        cut_out_tiff_after_its_preview(),
    ],
    ids=[
        "premultiplied-grey-tiff",
        "white-on-black",
        "0-1-labels",
        "voc-palette",
        "voc-palette-void-border",
        "cut-out",
        "broken-exif",
        "cut-out-broken-exif",
        "partly-erased",
        "16-bit-full-scale",
        "16-bit-holding-8-bit-values",
        "tiff-preview-first",
    ],
)
def test_common_mask_files_store_the_product_the_reviewer_marked(parts: ConsoleParts, data: bytes) -> None:
    status, detail, stored = upload(parts, data)
    assert status == 200, detail
    assert stored is not None and np.array_equal(stored > 0, product())


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (png(Image.new("L", (SIDE, SIDE), 0)), "marks no product pixels"),
        (png(Image.fromarray(np.where(product()[..., None], [255, 0, 0], 0).astype(np.uint8))), "no product"),
        (png(Image.new("L", (SIDE, SIDE), 255)), "marks every pixel as product"),
        (png(Image.new("RGBA", (SIDE, SIDE), (255, 255, 255, 0))), "marks no product pixels"),
    ],
    ids=["black", "red-on-black", "white", "transparent"],
)
def test_a_mask_that_marks_nothing_or_everything_is_refused(
    parts: ConsoleParts, data: bytes, says: str
) -> None:
    status, detail, _ = upload(parts, data)
    assert status == 422 and says in detail
    assert parts.tasks.counts()["claimed"] == 1  # the reviewer still holds it and can try again


def test_an_upload_over_the_image_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """The route read at most one byte past SKUFORGE_MAX_IMAGE_BYTES, but the framework had spooled the
    whole multipart body to disk before it ran: a client could fill the disk. The declared length is
    checked first now (413); a mask just over the limit inside a form under the cap still gets the
    size check that names it (422)."""
    settings = load_settings(store_uri=f"file://{tmp_path / 'store'}", max_image_bytes=4096)
    parts = build_console(tmp_path, lease_s=600.0, settings=settings)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0, sku_id="SKU-0")))
    (task,) = parts.tasks.query()
    client = TestClient(app_for(parts), base_url="http://console.test")
    headers = {"X-CSRF-Token": login(client)}
    assert client.post(f"/api/tasks/{task.task_id}/claim", headers=headers).status_code == 200
    url = f"/api/tasks/{task.task_id}/decision"
    huge = b"\x89PNG\r\n\x1a\n" + bytes(4096 + FORM_OVERHEAD_BYTES)
    response = client.post(
        url,
        data={"decision": "approve_edited"},
        files={"mask": ("m.png", huge, "image/png")},
        headers=headers,
    )
    assert response.status_code == 413 and "SKUFORGE_MAX_IMAGE_BYTES" in response.json()["detail"]
    just_over = b"\x89PNG\r\n\x1a\n" + bytes(4096)
    response = client.post(
        url,
        data={"decision": "approve_edited"},
        files={"mask": ("m.png", just_over, "image/png")},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    assert parts.tasks.counts()["claimed"] == 1, "the reviewer still holds it and can try again"


def test_a_body_whose_length_is_not_declared_or_is_dressed_up_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    """The caps trusted the headers: a chunked login form declaring 10 bytes delivered as much as it
    liked (the parser ignores Content-Length beside Transfer-Encoding), before any login; a multipart
    type in other letter case passed uncapped; url-encoded POSTs other than /login had no cap."""
    settings = load_settings(store_uri=f"file://{tmp_path / 'store'}", max_image_bytes=4096)
    parts = build_console(tmp_path, lease_s=600.0, settings=settings)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0, sku_id="SKU-0")))
    (task,) = parts.tasks.query()
    client = TestClient(app_for(parts), base_url="http://console.test")

    def chunks() -> Iterator[bytes]:
        yield b"reviewer=alice&password="
        yield b"x" * 100_000

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    chunked = client.post("/login", content=chunks(), headers=form)
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["detail"]

    headers = {"X-CSRF-Token": login(client)}
    assert client.post(f"/api/tasks/{task.task_id}/claim", headers=headers).status_code == 200
    body = b"--x\r\n" + b"\0" * (4096 + FORM_OVERHEAD_BYTES) + b"\r\n--x--\r\n"
    shouting = client.post(
        f"/api/tasks/{task.task_id}/decision",
        content=body,
        headers={**headers, "Content-Type": "Multipart/Form-Data; boundary=x"},
    )
    assert shouting.status_code == 413, shouting.text
    padded = client.post(
        f"/api/tasks/{task.task_id}/renew", content=b"pad=" + b"x" * 100_000, headers={**headers, **form}
    )
    assert padded.status_code == 413, padded.text
    assert client.post(f"/api/tasks/{task.task_id}/renew", headers=headers).status_code == 200


def _post_raw(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """POST to ``app`` with ``headers`` as sent, byte for byte; (status, body). The test client re-encodes
    header values as UTF-8, so a byte that latin-1 reads as a digit of another script never arrives."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"console.test"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("console.test", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(message for message in sent if message["type"] == "http.response.start")
    return start["status"], b"".join(message.get("body", b"") for message in sent[1:])


@pytest.mark.parametrize("digits", ["\u00b2", "\u00b9\u00b2"], ids=["superscript-two", "superscript-twelve"])
def test_a_content_length_in_other_digits_is_refused_with_why(tmp_path: Path, digits: str) -> None:
    # str.isdigit took a superscript digit (latin-1 byte 0xB2, as Starlette reads headers) for a
    # length, and int() then raised: a 500. uvicorn's h11 refuses such a header itself, but the
    # console's own check should not lean on the server in front of it.
    form = (b"content-type", b"application/x-www-form-urlencoded")
    status, body = _post_raw(
        app_for(build_console(tmp_path, lease_s=600.0)),
        "/login",
        [form, (b"content-length", digits.encode("latin-1"))],
    )
    assert status == 400 and b"Content-Length" in body, body


def test_the_edited_mask_is_stored_before_the_task_table_is_locked(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mask was written to the object store inside the decision's transaction: an S3 write there
    (minutes with its retries) held the table's write lock, and every claim, renewal and intake write
    waited and then failed. It is written first now; its key carries its sha256."""
    import sqlite3

    locked_while_writing: list[bool] = []
    put_bytes = parts.store.put_bytes

    def probing(key: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
        if key.startswith("masks/corrected/"):
            probe = sqlite3.connect(parts.tasks.path, timeout=0, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                locked_while_writing.append(False)
            except sqlite3.OperationalError:
                locked_while_writing.append(True)
            finally:
                probe.close()
        return put_bytes(key, data, content_type)

    monkeypatch.setattr(parts.store, "put_bytes", probing)
    status, detail, stored = upload(parts, white_on_black())
    assert stored is not None and np.array_equal(stored > 0, product())
    assert status == 200, detail
    assert locked_while_writing == [False]


def test_only_the_decision_route_takes_a_large_multipart_body(tmp_path: Path) -> None:
    # The large cap went by content type: a multipart claim, renew or logout of megabytes was
    # accepted and spooled, where the docs promise 16 KiB for any POST but a decision with its mask.
    settings = load_settings(store_uri=f"file://{tmp_path / 'store'}", max_image_bytes=1 << 20)
    parts = build_console(tmp_path, lease_s=600.0, settings=settings)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0, sku_id="SKU-0")))
    (task,) = parts.tasks.query()
    client = TestClient(app_for(parts), base_url="http://console.test")
    headers = {"X-CSRF-Token": login(client)}
    padding = {"pad": ("pad.bin", b"\0" * 100_000, "application/octet-stream")}
    for path in (f"/api/tasks/{task.task_id}/claim", f"/api/tasks/{task.task_id}/renew", "/logout"):
        response = client.post(path, files=padding, headers=headers)
        assert response.status_code == 413, (path, response.text)
        assert "at most 16384 bytes" in response.json()["detail"]
    assert parts.tasks.counts()["pending"] == 1, "the oversized claim did nothing"
    assert client.post(f"/api/tasks/{task.task_id}/claim", headers=headers).status_code == 200
    decision = client.post(
        f"/api/tasks/{task.task_id}/decision",
        data={"decision": "approve_edited"},
        files={"mask": ("m.png", b"\0" * 100_000, "image/png")},
        headers=headers,
    )
    assert decision.status_code == 422, "a large mask reaches the decision route (refused there: no PNG)"
