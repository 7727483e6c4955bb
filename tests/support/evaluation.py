"""Photos for the evaluation and bench tests: ``shelf_photo``, a photo with structure at every scale,
the kind the leakage checks' perceptual hash is made for (the flat colour photos give it nothing);
``large_product_shot``, a JPEG whose hash SKUFORGE_MAX_IMAGE_PIXELS moves; ``fill_colour_store``, a
retraining store of flat colour photos (``colour_photo``, stored by
``store_photo`` as the trainstore stores them), and ``evaluate_args``, a quick ``skuforge evaluate``
on it; ``grocery_dataset``, a tiny GroceryStoreDataset folder for bench/augment.py; and
``one_torch_thread`` (from ``tests/support/threads.py``), an autouse fixture a test module takes by
importing it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from shared.images import encode_png
from shared.trainstore.manifest import ManifestRow, ManifestStore, Source, Status
from tests.support.threads import one_torch_thread  # noqa: F401 (re-exported: autouse where imported)


def shelf_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo with structure at every scale (waves of light, boxes), unlike the flat colour photos:
    what a perceptual hash is made for."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    wx, wy, phase = rng.uniform(8, 30), rng.uniform(8, 30), rng.uniform(0, 6.3)
    grey = 128 + 50 * np.sin(x / wx + phase) * np.cos(y / wy) + 30 * np.sin((x + y) / rng.uniform(15, 40))
    pixels = np.repeat(grey[..., None], 3, axis=2)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        pixels[y0 : y0 + int(rng.integers(20, 80)), x0 : x0 + int(rng.integers(20, 80))] *= rng.uniform(
            0.5, 1.2, 3
        )
    pixels += rng.normal(0, 3, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def large_product_shot(path: Path) -> Path:
    """A 4000 x 3000 JPEG at ``path`` of a narrow product with detail on white: hashed by its product,
    which is decoded again larger, so a limit between its 1/8 decode and its full size moves the hash."""
    frame = Image.new("RGB", (4000, 3000), (255, 255, 255))
    blocks = np.random.default_rng(0).integers(0, 256, (12, 6, 3), dtype=np.uint8)
    frame.paste(Image.fromarray(blocks).resize((300, 600), Image.Resampling.NEAREST), (1850, 1200))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.save(path, quality=90)
    return path


COLOURS = {"SKU-RED": (200, 30, 30), "SKU-GREEN": (30, 170, 40), "SKU-BLUE": (30, 40, 200)}


TINY = ["--backbone", "tiny", "--image-px", "48"]


def colour_photo(rgb: tuple[int, int, int], seed: int, size_px: int = 48) -> Image.Image:
    """A photo of one colour with a little noise and a brightness shift, so no two are equal."""
    rng = np.random.default_rng(seed)
    pixels = np.array(rgb, dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.normal(
        0, 6, (size_px, size_px, 3)
    )
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def store_photo(
    manifests: ManifestStore,
    sku_id: str,
    item_id: str,
    source: Source,
    image: Image.Image | bytes,
    status: Status | None = None,
) -> None:
    """Store an image the way the trainstore does (pixels as PNG, or these exact bytes) and append
    its manifest row."""
    key = f"images/{sku_id}/{source}/{item_id}.png"
    data = image if isinstance(image, bytes) else encode_png(image)
    ref = manifests.store.put_bytes(manifests.key(key), data, "image/png")
    width, height = Image.open(io.BytesIO(data)).size
    row = ManifestRow(
        item_id=item_id,
        sku_id=sku_id,
        category="soda can",
        source=source,
        status=status or ("reference" if source == "real" else "accepted"),
        image=key,
        image_sha256=ref.sha256,
        width=width,
        height=height,
    )
    manifests.append(sku_id, [row])


def fill_colour_store(manifests: ManifestStore) -> ManifestStore:
    """Three colour SKUs (2 real, 4 synthetic each) and one SKU without held-out photos."""
    for index, (sku_id, rgb) in enumerate(COLOURS.items()):
        for n in range(2):
            store_photo(manifests, sku_id, f"real-{n}", "real", colour_photo(rgb, 100 * index + n))
        for n in range(4):
            store_photo(manifests, sku_id, f"gen-{n}", "synthetic", colour_photo(rgb, 100 * index + 10 + n))
    store_photo(manifests, "SKU-EXTRA", "real-0", "real", colour_photo((120, 120, 120), 999))
    return manifests


def evaluate_args(heldout: Path, out: Path, tmp_path: Path, *extra: str) -> list[str]:
    """``skuforge evaluate``'s arguments for a quick run on ``heldout`` into ``out``: the tiny backbone
    on 48 px photos, two synthetic photos per real one, features cached in ``tmp_path``."""
    return [
        "evaluate",
        "--heldout",
        str(heldout),
        "--out",
        str(out),
        "--max-synthetic-per-real",
        "2",
        "--cache-dir",
        str(tmp_path / "features"),
        *TINY,
        *extra,
    ]


def grocery_dataset(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """A GroceryStoreDataset folder: per class its iconic photo and ``counts[class][split]`` photos of
    its own in the train and val splits (no test split)."""
    from shared.evaluation.experiment import encode_jpeg  # torch: only where a dataset is made

    header = "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
    rows = [header + "Iconic Image Path (str),Product Description Path (str)\n"]
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    seed = 0
    for class_id, (name, per_split) in enumerate(counts.items()):
        iconic = f"iconic-images-and-descriptions/Fruit/{name}/{name}_Iconic.jpg"
        (root / iconic).parent.mkdir(parents=True)
        (root / iconic).write_bytes(encode_jpeg(shelf_photo(seed := seed + 1)))
        rows.append(f"{name},{class_id},{name},{class_id},/{iconic},/desc.txt\n")
        for split, count in per_split.items():
            (root / split / name).mkdir(parents=True)
            for n in range(count):
                (root / split / name / f"{n}.jpg").write_bytes(encode_jpeg(shelf_photo(seed := seed + 1)))
                lines[split].append(f"{split}/{name}/{n}.jpg, {class_id}, {class_id}\n")
    (root / "classes.csv").write_text("".join(rows))
    for split, split_lines in lines.items():
        (root / f"{split}.txt").write_text("".join(split_lines))
    return root
