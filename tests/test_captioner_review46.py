"""The captioner on metadata whose words grow when spelled plainly or lowercased: its event must still
meet its own contract (``schemas/events.py``), or the SKU was matted again on every retry and then
dead-lettered as handler_error, a pydantic error its owner could not act on."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from schemas.common import SkuMetadata
from schemas.events import MAX_PHRASE_CHARS, SkuCaptioned, SkuIngested
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels, handle
from shared.captioning.prompts import class_noun, compose_tags, sku_prompts
from shared.config import load_settings
from shared.matting.session import U2NetPSession
from shared.store import FileStore
from tests.support.bus import ingested_envelope
from tests.support.captioning import context, stored_photos
from tests.support.matting import stand_in_onnx_bytes


def _red_box_on_green() -> Image.Image:
    """A photo the stand-in model mats: its red box scores high, the green backdrop low."""
    image = Image.new("RGB", (128, 96), (0, 200, 0))
    image.paste((200, 0, 0), (32, 16, 96, 80))
    return image


# Within the contract's 100 characters, most spelled with two letters plainly: "ß" is "ss".
GROWING_CATEGORY = "Süßwaren " + "ß" * 91
# Within the contract's 200 characters; "İ" lowercased is two characters ("i" and a combining dot).
GROWING_NAME = "İZMİR İNCİRİ " * 15 + "İZMİR"


def test_a_category_that_grows_when_spelled_plainly_gives_prompts_within_the_contract() -> None:
    """A 100-character category of many "ß" was a class noun of 192 characters, and an instance
    prompt of 218 (at most 200): the noun is cut at a word to fit its prompts, and a category that
    fits is left as it was."""
    sku = SkuMetadata(sku_id="DE-1", name="Süßwaren", category=GROWING_CATEGORY)
    prompts = sku_prompts(sku)
    assert len(prompts.instance_prompt) <= MAX_PHRASE_CHARS
    assert len(prompts.class_prompt) <= MAX_PHRASE_CHARS
    assert prompts.class_noun == "susswaren"
    assert class_noun("Crème fraîche") == "creme fraiche"


def test_a_name_that_grows_when_lowercased_gives_tags_within_the_contract() -> None:
    """A 200-character Turkish name in capitals was a tag of more than 200 characters once lowercased."""
    sku = SkuMetadata(sku_id="TR-1", name=GROWING_NAME, category="dried figs")
    tags = compose_tags(sku, ["brown"], "pouch", "front view")
    assert all(len(tag) <= MAX_PHRASE_CHARS for tag in tags)
    assert any(tag.startswith("i̇zmi̇r") for tag in tags)


def test_a_sku_whose_metadata_grows_is_captioned(tmp_path: Path) -> None:
    """Through the stage's handler: the SKU is captioned (its event built), not a ValidationError."""
    store = FileStore(tmp_path / "store")
    ctx = context(store, load_settings(store_uri=store.base_uri))
    sku = SkuMetadata(sku_id="DE-1", name=GROWING_NAME, category=GROWING_CATEGORY)
    photos = stored_photos(store, sku.sku_id, {"p1": _red_box_on_green()})
    event = ingested_envelope(SkuIngested(sku=sku, photos=photos))
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    session.warm_up()
    options = load_settings(CaptionerSettings, captioner_use_gpu=False)
    [emit] = handle(event, ctx, models=CaptionerModels(session=session, vlm=None, options=options))
    assert isinstance(emit.payload, SkuCaptioned)
    assert emit.payload.photos[0].usable
