"""How far a held-out photo padded with plain bars reads from the store photo it pads, and how near
distinct photos come, by the leakage check's hashes (``shared.evaluation.leakage``).

    python -m bench.leakage_bars --grocery-dataset /data/GroceryStoreDataset/dataset

Padded copies: the 18 committed in-store sample photos (samples/grocerystore-scenes and the
non-catalogue photos of samples/grocerystore) and 60 train photos (every 44th, sorted), each padded
with black or white bars of 5-40% of its width at the sides, or of its height above and below, saved
as JPEG quality 60 and 85: the held-out copy's ``heldout_hash`` against the original's
``copy_hashes``, as ``check_no_near_duplicates`` compares them. Distinct photos: each train and
catalogue photo (``iconic-images-and-descriptions``) as a store image against every other as
held-out, and how many have one nearer than ``--near-bits``. The test split is never read.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from shared.argtypes import path_argument, positive_int
from shared.commands import run_command
from shared.evaluation.leakage import NEAR_DUPLICATE_MAX_BITS, copy_hashes, heldout_hash

HERE = Path(__file__).parent
SAMPLES = HERE.parent / "samples"
BAR_SHARES = (0.05, 0.15, 0.25, 0.30, 0.35, 0.40)
COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255)}
QUALITIES = (60, 85)
# Bits set in each byte value: the popcount of an XOR of two hashes, a byte at a time.
_BITS_SET = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint16)
TRAIN_STEP = 44  # every 44th of GroceryStoreDataset's 2,640 train photos: 60


def padded(photo: Image.Image, share: float, colour: tuple[int, int, int], *, sides: bool) -> Image.Image:
    """``photo`` with bars of ``share`` of its width at both sides (``sides``) or of its height above
    and below."""
    width, height = photo.size
    bar = round((width if sides else height) * share)
    size = (width + 2 * bar, height) if sides else (width, height + 2 * bar)
    out = Image.new("RGB", size, colour)
    out.paste(photo, (bar, 0) if sides else (0, bar))
    return out


def bits_apart(held: bytes, stored: bytes) -> int:
    """The fewest bits between any variant of ``held`` and any part of ``stored``."""
    rows = np.unpackbits(np.frombuffer(held, dtype=np.uint8).reshape(-1, 32), axis=1)
    parts = np.unpackbits(np.frombuffer(stored, dtype=np.uint8).reshape(-1, 32), axis=1)
    return int((rows[:, None, :] != parts[None, :, :]).sum(axis=2).min())


def padded_copies(photos: list[Path]) -> list[dict[str, object]]:
    """One row per padded copy: the photo, its bars, its quality and its bits from the original."""
    rows: list[dict[str, object]] = []
    for path in photos:
        data = path.read_bytes()
        stored = copy_hashes(data)
        if stored is None:
            continue
        photo = Image.open(io.BytesIO(data)).convert("RGB")
        for sides in (True, False):
            for share in BAR_SHARES:
                for colour, rgb in COLOURS.items():
                    for quality in QUALITIES:
                        out = io.BytesIO()
                        padded(photo, share, rgb, sides=sides).save(out, "JPEG", quality=quality)
                        held = heldout_hash(out.getvalue())
                        bits = 256 if held is None else bits_apart(held, stored)
                        where = "sides" if sides else "above and below"
                        rows.append(
                            {
                                "photo": path.name,
                                "bars": where,
                                "share": share,
                                "colour": colour,
                                "quality": quality,
                                "bits": bits,
                            }
                        )
    return rows


def nearest_others(photos: list[Path], near_bits: int) -> dict[str, object]:
    """Of each photo, the bits to its nearest other: each photo's ``copy_hashes`` against every other's
    ``heldout_hash``, as ``check_no_near_duplicates`` compares a store image with the held-out photos;
    and how many photos have one nearer than ``near_bits``."""
    held = [heldout_hash(path.read_bytes()) for path in photos]
    stored = [copy_hashes(path.read_bytes()) for path in photos]
    hashed = [index for index, value in enumerate(held) if value is not None]
    rows = np.frombuffer(b"".join(held[index] or b"" for index in hashed), dtype=np.uint8).reshape(
        len(hashed), -1, 32
    )
    owners = np.array(hashed)
    nearest: list[int] = []
    for index, value in enumerate(stored):
        if value is None:
            continue
        parts = np.frombuffer(value, dtype=np.uint8).reshape(-1, 32)
        bits = _BITS_SET[rows[:, :, None, :] ^ parts[None, None, :, :]].sum(axis=3).min(axis=(1, 2))
        nearest.append(int(bits[owners != index].min()))
    return {
        "photos": len(photos),
        "no_hash": len(photos) - len(nearest),
        "nearest_bits": min(nearest),
        f"nearer_than_{near_bits}": sum(bits < near_bits for bits in nearest),
    }


def summary(rows: list[dict[str, object]]) -> dict[str, object]:
    """Per bar side, the fewest and the most bits a copy reads, and the copies that pass the check
    (more than ``NEAR_DUPLICATE_MAX_BITS``)."""
    out: dict[str, object] = {}
    for where in ("sides", "above and below"):
        mine = [row for row in rows if row["bars"] == where]
        bits = [int(str(row["bits"])) for row in mine]
        passing = [row for row in mine if int(str(row["bits"])) > NEAR_DUPLICATE_MAX_BITS]
        out[where] = {
            "copies": len(mine),
            "min_bits": min(bits),
            "max_bits": max(bits),
            "pass_the_check": passing,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Print how near the sample and train photos come to each other; a refusal says so in a line."""
    return run_command("python -m bench.leakage_bars", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leakage_bars", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grocery-dataset",
        type=path_argument("folder"),
        required=True,
        help="GroceryStoreDataset's dataset/ folder",
    )
    parser.add_argument(
        "--near-bits", type=positive_int, default=20, help="count photos whose nearest other is nearer"
    )
    parser.add_argument("--skip-distinct", action="store_true", help="only the padded copies")
    args = parser.parse_args(argv)
    samples = sorted((SAMPLES / "grocerystore-scenes").glob("*/*.jpg")) + sorted(
        path for path in (SAMPLES / "grocerystore").glob("*/*.jpg") if "Iconic" not in path.name
    )
    train = sorted((args.grocery_dataset / "train").rglob("*.jpg"))
    report: dict[str, object] = {
        "samples": summary(padded_copies(samples)),
        "train": summary(padded_copies(train[::TRAIN_STEP])),
    }
    if not args.skip_distinct:
        catalogue = sorted((args.grocery_dataset / "iconic-images-and-descriptions").rglob("*.jpg"))
        report["distinct"] = nearest_others([*train, *catalogue], args.near_bits)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
