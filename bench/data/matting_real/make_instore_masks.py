"""Re-derive the hand-checked reference masks for the reserved in-store photos.

No learned model of any kind is used here: these masks are the reference that
learned matting models are judged against.

Inputs
  instore_reserved.json   list of {path, id, ...}; path is relative to the
                          GroceryStoreDataset root (--data, default
                          $SKUFORGE_GROCERY_DATASET).  These photos are taken only from
                          split.json "reserved_train".
  polygons/<id>.json      hand-placed polygons, photo pixel coordinates (x right,
                          y down; fractional values allowed):
                            include           polygons covering the product
                            exclude           polygons that are never product
                                              (fingers over the product, ...)
                            force_fg          polygons always product (thin stems)
                            grabcut_band_px   0 = polygon only
                            grabcut_iters     GrabCut iterations (default 6)

Method (per photo)
  1. poly = fillPoly(include) - fillPoly(exclude).
  2. If grabcut_band_px = b > 0: cv2.setRNGSeed(0); cv2.grabCut(GC_INIT_WITH_MASK)
     with sure FG = poly eroded by b, sure BG = outside poly dilated by b
     (ellipse kernel 2b+1) and inside exclude, probable FG / BG in the band
     inside / outside the polygon.  So the outline can only move within +-b px
     of the hand-placed polygon.  Result = FG | probable FG.
  3. Minus exclude, plus force_fg; 3x3 ellipse open then close; keep the largest
     connected component; fill holes that do not touch the image border.

Outputs
  masks/<id>.png   mode "L", values 0 / 255, same size as the photo.

Run (from the repository root; needs OpenCV, which skuforge does not install:
`.venv/bin/pip install opencv-python-headless`):
      python -m bench.data.matting_real.make_instore_masks [--data DIR] [--check]
          [--manifest NAME] [--only ID ...]
      --check compares with the existing masks/<id>.png instead of writing.
      --manifest names the manifest next to this script (default
      instore_reserved.json; instore_pristine.json holds further reserved photos
      made the same way).
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from bench.data.matting_real.mask_scripts import NO_OPENCV, add_data_argument, dataset_folder
from shared.commands import run_command

HERE = os.path.dirname(os.path.abspath(__file__))
SHIFT = 4  # fillPoly sub-pixel bits: vertices may be fractional
# A polygon as its JSON file holds it: [x, y] vertices, fractional values allowed.
Polygon = Sequence[Sequence[float]]


def fill(polys: Sequence[Polygon] | None, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    import cv2

    m = np.zeros(shape, np.uint8)
    for p in polys or []:
        pts = np.round(np.asarray(p, np.float64) * (1 << SHIFT)).astype(np.int32)
        cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8, shift=SHIFT)
    return m.astype(bool)


def ellipse(r: int) -> npt.NDArray[np.uint8]:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def derive(bgr: npt.NDArray[np.uint8], spec: dict[str, Any]) -> npt.NDArray[np.uint8]:
    import cv2

    shape = bgr.shape[:2]
    exclude = fill(spec.get("exclude"), shape)
    poly = fill(spec["include"], shape) & ~exclude
    band = int(spec.get("grabcut_band_px", 0))
    if band > 0:
        p8 = poly.astype(np.uint8)
        sure_fg = cv2.erode(p8, ellipse(band)).astype(bool)
        maybe = cv2.dilate(p8, ellipse(band)).astype(bool)
        gc = np.full(shape, cv2.GC_BGD, np.uint8)
        gc[maybe & ~poly] = cv2.GC_PR_BGD
        gc[poly] = cv2.GC_PR_FGD
        gc[sure_fg] = cv2.GC_FGD
        gc[exclude] = cv2.GC_BGD
        cv2.setRNGSeed(0)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(bgr, gc, None, bgd, fgd, int(spec.get("grabcut_iters", 6)), cv2.GC_INIT_WITH_MASK)
        mask = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    else:
        mask = poly
    mask = (mask & ~exclude) | fill(spec.get("force_fg"), shape)
    m8 = mask.astype(np.uint8)
    m8 = cv2.morphologyEx(m8, cv2.MORPH_OPEN, ellipse(1))
    m8 = cv2.morphologyEx(m8, cv2.MORPH_CLOSE, ellipse(1))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m8, connectivity=8)
    if n > 1:
        m8 = (lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    # fill holes not touching the border
    bg_lab, _ = ndimage.label(m8 == 0)
    border = set(np.unique(np.concatenate([bg_lab[0], bg_lab[-1], bg_lab[:, 0], bg_lab[:, -1]])))
    holes = (m8 == 0) & ~np.isin(bg_lab, list(border))
    return np.where((m8 > 0) | holes, 255, 0).astype(np.uint8)


def main(argv: Sequence[str] | None = None) -> int:
    """Re-derive (or with --check compare) the in-store masks; 1 when a mask differs, and a refusal
    run_command can name (Ctrl-C) is one line."""
    return run_command("python -m bench.data.matting_real.make_instore_masks", lambda: _make(argv))


def _make(argv: Sequence[str] | None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.data.matting_real.make_instore_masks", description=__doc__.splitlines()[0]
    )
    add_data_argument(ap)
    ap.add_argument("--check", action="store_true")
    ap.add_argument(
        "--manifest",
        default="instore_reserved.json",
        help="manifest file name next to this script (default instore_reserved.json)",
    )
    ap.add_argument("--only", nargs="*", help="ids to process (default: all in the manifest)")
    a = ap.parse_args(argv)
    data = dataset_folder(ap, a.data)
    manifest = Path(HERE, a.manifest)
    if not manifest.is_file():
        ap.error(f"--manifest {a.manifest}: no such manifest next to this script ({HERE})")
    entries = json.loads(manifest.read_text())
    if unknown := sorted(set(a.only or ()) - {e["id"] for e in entries}):
        ap.error(f"--only: {', '.join(unknown)} not in {a.manifest}")
    entries = [e for e in entries if not a.only or e["id"] in a.only]
    # Checked before any mask is written: a photo missing half-way was a traceback (cv2.imread's None).
    if missing := [e["path"] for e in entries if not Path(data, e["path"]).is_file()]:
        ap.error(
            f"{Path(data, missing[0])}: no such photo ({len(missing)} of {len(entries)} missing; "
            "--data names GroceryStoreDataset's dataset/ folder)"
        )
    try:
        import cv2
    except ImportError:
        ap.error(NO_OPENCV)
    bad = 0
    for e in entries:
        spec = json.loads(Path(os.path.join(HERE, "polygons", e["id"] + ".json")).read_text())
        bgr = cv2.imread(os.path.join(data, e["path"]), cv2.IMREAD_COLOR)
        if bgr is None:
            ap.error(f"{Path(data, e['path'])}: not an image OpenCV can read")
        mask = derive(bgr, spec)
        out = os.path.join(HERE, "masks", e["id"] + ".png")
        if a.check:
            old = cv2.imread(out, cv2.IMREAD_GRAYSCALE)
            same = old is not None and old.shape == mask.shape and np.array_equal(old, mask)
            bad += not same
            print(("ok  " if same else "DIFF") + " " + e["id"])
        else:
            cv2.imwrite(out, mask)
            print("wrote", out)
    if bad:
        print(f"python -m bench.data.matting_real.make_instore_masks: {bad} masks differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
