"""Re-derive the hand-checked reference masks for the catalogue (iconic) photos.

No learned model of any kind is used here: these masks are the reference that
learned matting models are judged against.

Inputs
  split.json            "bench_catalogue": 45 jpg paths relative to the
                               GroceryStoreDataset root (--data, default
                               $SKUFORGE_GROCERY_DATASET).
  polygons/<id>.json           optional, hand-placed polygons for photos where
                               the flood fill leaks into a white/light product
                               (see step 4 below).

Method (per photo)
  1. Convert to CIE Lab (L in 0..100).  The background colour is the median of
     the one-pixel image border (pure white on these photos).
  2. "Near background" pixel: Lab distance to the background colour <= TOL
     (default 12; per-photo overrides in TOL_OVERRIDES).  The image is lightly
     median-filtered (3x3) before the distance is taken so isolated JPEG
     ringing pixels do not break the fill.
  3. Background = connected components (4-connectivity) of near-background
     pixels that touch the image border.  Product = everything else, which
     automatically fills holes (any non-border-connected white region, e.g.
     specular highlights or white print, stays product).  Tiny product
     specks (< MIN_BLOB px) are dropped.
  4. If polygons/<id>.json exists it is applied:
       {"mode": "replace", "polygons": [[[x, y], ...], ...]}
           mask = filled polygons (pixel coordinates of the original photo)
       {"mode": "union", ...}     mask |= polygons   (repair a leak)
       {"mode": "subtract", ...}  mask &= ~polygons  (remove reflection etc.)
     Several operations may be listed: {"ops": [{"mode": ..., "polygons": ...}, ...]}
     applied in order.  An optional "grabcut": N refines the final mask with
     N iterations of cv2.grabCut inside a 3 px band around its outline
     (supported, but not used by any current polygon: it ate into white
     carton faces).  Each file's "source" says how its vertices were made.
     The carton polygons were initialised offline from the convex hull of
     flood_mask(bgr, 3) (5x5 opening, largest blob), every edge was snapped
     to the strongest whiteness gradient within 3 px, and the vertices were
     then checked and corrected by eye on 5-10x zooms (reflections and drop
     shadows cut away); the stored vertices are the final ones.

Outputs
  masks/<id>.png     mode "L", values 0 / 255, same size as the photo;
                     <id> = path without ".jpg", "/" replaced by "__".
  catalogue.json     list of {path, id, kind, sha256, method, note}.

Run (from the repository root; needs OpenCV, which skuforge does not install:
`.venv/bin/pip install opencv-python-headless`):
      python -m bench.data.matting_real.make_catalogue_masks [--data DIR]
"""

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from bench.data.matting_real.mask_scripts import NO_OPENCV, add_data_argument, dataset_folder
from shared.commands import run_command

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 12.0
MIN_BLOB = 30
TOL_OVERRIDES = {  # id -> tolerance; light products need a tighter tolerance
    "iconic-images-and-descriptions__Packages__Yoghurt__Yoggi-Strawberry-Yoghurt__Yoggi-Strawberry-Yoghurt_Iconic": 6,  # noqa: E501
    "iconic-images-and-descriptions__Packages__Yoghurt__Yoggi-Vanilla-Yoghurt__Yoggi-Vanilla-Yoghurt_Iconic": 6,  # noqa: E501
    "iconic-images-and-descriptions__Vegetables__Garlic__Garlic_Iconic": 6,
    "iconic-images-and-descriptions__Vegetables__Leek__Leek_Iconic": 6,
}
# free-text notes for catalogue.json, keyed by the last path component
NOTES = {
    "Bravo-Apple-Juice_Iconic": "white carton top; mirror reflection of the carton on the floor excluded (background)",  # noqa: E501
    "Bravo-Orange-Juice_Iconic": "white carton top; mirror reflection of the carton on the floor excluded (background)",  # noqa: E501
    "Oatly-Oat-Milk_Iconic": "white cap/top; soft drop shadow to the right excluded (background)",
    "Yoggi-Strawberry-Yoghurt_Iconic": "light bottle: tighter tolerance; white shoulder right of the cap added by polygon",  # noqa: E501
    "Yoggi-Vanilla-Yoghurt_Iconic": "light bottle: tighter tolerance",
    "Garlic_Iconic": "white product on white: tighter tolerance (tol 12 leaked into the bulb)",
    "Leek_Iconic": "white leek shaft: tighter tolerance (tol 12 leaked); root tuft included",
}
CARTON_NOTE = (
    "white/light carton parts (cap, top fin, white faces) made the flood fill leak; straight-edged polygon"
)


def note(rel: str, method: str) -> str:
    """The manifest's note for a photo: its own line in NOTES, else the carton note for a drawn polygon."""
    return NOTES.get(rel.split("/")[-1][:-4], CARTON_NOTE if method == "hand-checked polygon" else "")


def path_to_id(p: str) -> str:
    return p[:-4].replace("/", "__") if p.endswith(".jpg") else p.replace("/", "__")


def flood_mask(bgr: npt.NDArray[np.uint8], tol: float) -> npt.NDArray[np.bool_]:
    """Product mask (bool) by border-connected flood fill in Lab."""
    import cv2

    smooth = cv2.medianBlur(bgr, 3)
    lab = cv2.cvtColor(smooth.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    bg = np.median(border, axis=0)
    near = np.linalg.norm(lab - bg, axis=2) <= tol
    lbl, _count = ndimage.label(near)  # 4-connectivity
    edge_labels = np.unique(np.concatenate([lbl[0], lbl[-1], lbl[:, 0], lbl[:, -1]]))
    edge_labels = edge_labels[edge_labels > 0]
    background = np.isin(lbl, edge_labels)
    product = ~background
    # drop tiny isolated specks (JPEG noise far from the product)
    plbl, pn = ndimage.label(product, structure=np.ones((3, 3)))
    if pn:
        sizes = ndimage.sum(product, plbl, index=np.arange(1, pn + 1))
        keep = np.zeros(pn + 1, bool)
        keep[1:] = sizes >= MIN_BLOB
        product = keep[plbl]
    return product


def fill_polys(shape: tuple[int, ...], polys: Sequence[Sequence[Sequence[float]]]) -> npt.NDArray[np.bool_]:
    import cv2

    m = np.zeros(shape[:2], np.uint8)
    for poly in polys:
        pts = np.round(np.asarray(poly, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(m, [pts], 1)
    return m.astype(bool)


def grabcut_refine(
    bgr: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_], iters: int, band: int = 3
) -> npt.NDArray[np.bool_]:
    import cv2

    k = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    inner = cv2.erode(mask.astype(np.uint8), k).astype(bool)
    outer = cv2.dilate(mask.astype(np.uint8), k).astype(bool)
    gc = np.full(mask.shape, cv2.GC_BGD, np.uint8)
    gc[outer] = cv2.GC_PR_BGD
    gc[mask] = cv2.GC_PR_FGD
    gc[inner] = cv2.GC_FGD
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.grabCut(bgr, gc, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    return (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)


def apply_polygons(
    bgr: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_], spec: dict[str, Any]
) -> npt.NDArray[np.bool_]:
    ops = spec.get("ops") or [spec]
    for op in ops:
        pm = fill_polys(bgr.shape, op["polygons"])
        mode = op.get("mode", "union")
        if mode == "replace":
            mask = pm
        elif mode == "union":
            mask = mask | pm
        elif mode == "subtract":
            mask = mask & ~pm
        else:
            raise ValueError(mode)
    if spec.get("grabcut"):
        mask = grabcut_refine(bgr, mask, int(spec["grabcut"]))
    return mask


def main(argv: Sequence[str] | None = None) -> int:
    """Re-derive the masks and catalogue.json; a refusal run_command can name (Ctrl-C) is one line."""
    return run_command("python -m bench.data.matting_real.make_catalogue_masks", lambda: _make(argv))


def _make(argv: Sequence[str] | None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.data.matting_real.make_catalogue_masks", description=__doc__.splitlines()[0]
    )
    add_data_argument(ap)
    args = ap.parse_args(argv)
    data = dataset_folder(ap, args.data)
    split = json.loads(Path(os.path.join(HERE, "split.json")).read_text())
    photos = split["bench_catalogue"]
    # Checked before any mask is written: a photo missing half-way was a FileNotFoundError traceback.
    if missing := [rel for rel in photos if not Path(data, rel).is_file()]:
        ap.error(
            f"{Path(data, missing[0])}: no such photo ({len(missing)} of {len(photos)} missing; "
            "--data names GroceryStoreDataset's dataset/ folder)"
        )
    try:
        import cv2
    except ImportError:
        ap.error(NO_OPENCV)
    os.makedirs(os.path.join(HERE, "masks"), exist_ok=True)
    out = []
    for rel in photos:
        mid = path_to_id(rel)
        raw = Path(data, rel).read_bytes()
        bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            ap.error(f"{Path(data, rel)}: not an image OpenCV can read")
        tol = TOL_OVERRIDES.get(mid, TOL)
        mask = flood_mask(bgr, tol)
        method = f"border flood fill (Lab tol {tol:g}) + hole fill"
        pfile = os.path.join(HERE, "polygons", mid + ".json")
        if os.path.exists(pfile):
            spec = json.loads(Path(pfile).read_text())
            mask = apply_polygons(bgr, mask, spec)
            modes = sorted({op.get("mode", "union") for op in (spec.get("ops") or [spec])})
            if modes == ["replace"]:
                method = "hand-checked polygon"
            else:
                method += " + hand polygon " + "/".join(modes)
            if spec.get("grabcut"):
                method += f" + grabcut ({spec['grabcut']} it, 3 px band)"
        cv2.imwrite(os.path.join(HERE, "masks", mid + ".png"), mask.astype(np.uint8) * 255)
        out.append(
            {
                "path": rel,
                "id": mid,
                "kind": "catalogue",
                "sha256": hashlib.sha256(raw).hexdigest(),
                "method": method,
                "note": note(rel, method),
            }
        )
    with open(os.path.join(HERE, "catalogue.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} masks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
