"""NYU Depth v2 (labelled set) to aligned RGB / depth / segmentation shards for MultiMAE.

Reads the files NYU releases, as MultiMAE's and most RGB-D papers' NYUv2 numbers use them:

- ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5): ``images`` (1449 RGB 480x640), ``depths``
  (metres, holes filled by NYU's colourisation), ``rawDepths`` (metres, 0 where the Kinect saw
  nothing), ``labels`` (0 unlabelled, 1..894 object classes) and ``names`` (the 894 class names);
- ``splits.mat``: ``trainNdxs`` (795) and ``testNdxs`` (654), 1-based image indices;
- optional class map, e.g. ``classMapping40.mat`` (Gupta et al.'s 40 classes; ``mapClass``: the target
  class 1..K of each of the 894 classes, ``className``: the K names), or a ``.txt``/``.json`` of 894
  integers (then class names are ``class_<k>``). Without one, the 894 raw classes are kept.

Writes ``OUT/train`` and ``OUT/test`` shards (``rgb.png``, ``depth.png`` uint16 millimetres with 0 invalid,
``semseg.png`` class ids 0..K-1 with the unlabelled pixels at 255, uint16 with 65535 for the 894 raw
classes, and ``json``) plus ``classes.json``. No validation split is written: ``mimx multimodal eval``
carves one from the training shards, so the test split is only scored.

    python -m mimx.datasets.nyuv2 nyu_depth_v2_labeled.mat splits.mat data/nyuv2 \\
        --class-map classMapping40.mat --short-side 240
    mimx multimodal pretrain experiment=nyuv2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mimx.config import UserError
from mimx.data.shards import print_summary, write_dataset
from mimx.datasets.aligned import encode_sample, resize_aligned

NUM_RAW_CLASSES = 894
EIGEN_CROP = (45, 471, 41, 601)  # rows, columns of the region with valid depth (Eigen et al.'s evaluation crop)
DEPTHS = ("filled", "raw")


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise UserError("reading NYUv2's .mat files needs h5py and scipy: pip install 'mimx[multimodal]'") from exc
    return h5py


def read_mat(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """Variables ``names`` of a MATLAB file, v5/v7 (scipy) or v7.3 (HDF5); missing ones are left out."""
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise UserError("reading NYUv2's .mat files needs h5py and scipy: pip install 'mimx[multimodal]'") from exc
    try:
        mat = loadmat(str(path), variable_names=list(names))
        return {name: mat[name] for name in names if name in mat}
    except NotImplementedError:  # v7.3: an HDF5 file
        with _h5py().File(path, "r") as f:
            return {name: np.asarray(f[name]).T for name in names if name in f}  # MATLAB is column-major
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} is not a MATLAB .mat file: {exc}") from None


def read_splits(path: str | Path, count: int) -> dict[str, np.ndarray]:
    """0-based ``{"train", "test"}`` image indices from NYU's ``splits.mat``."""
    path = Path(path)
    mat = read_mat(path, ("trainNdxs", "testNdxs"))
    if set(mat) != {"trainNdxs", "testNdxs"}:
        raise UserError(f"{path} has no trainNdxs and testNdxs; give NYU's splits.mat (795 train / 654 test)")
    splits = {split: np.asarray(mat[key]).astype(np.int64).ravel() - 1
              for split, key in (("train", "trainNdxs"), ("test", "testNdxs"))}
    for split, index in splits.items():
        if index.size and (index.min() < 0 or index.max() >= count):
            raise UserError(f"{path}: {split} indices run {index.min() + 1}..{index.max() + 1} but the labelled "
                            f"set has {count} images; is it the splits.mat of the same release?")
    if np.intersect1d(splits["train"], splits["test"]).size:
        raise UserError(f"{path}: train and test indices overlap")
    return splits


@dataclass
class ClassMap:
    """Raw NYU class (0..894) -> written id; ``names`` in id order; ``ignore`` marks unlabelled pixels."""

    lookup: np.ndarray
    names: list[str]
    ignore: int


def _mat_strings(value: Any) -> list[str]:
    return [str(np.asarray(item).ravel()[0]) for item in np.asarray(value, dtype=object).ravel()]


def read_class_map(path: str | Path | None, raw_names: list[str]) -> ClassMap:
    """The class map of ``path`` (``mapClass`` .mat, or a .txt/.json of 894 ids 1..K); the raw classes if None."""
    if path is None:
        names = raw_names if len(raw_names) == NUM_RAW_CLASSES else [f"class_{k}" for k in range(1, 895)]
        lookup = np.concatenate([[65535], np.arange(NUM_RAW_CLASSES)]).astype(np.int64)
        return ClassMap(lookup, names, 65535)
    path = Path(path)
    names: list[str] = []
    if path.suffix.lower() == ".mat":
        mat = read_mat(path, ("mapClass", "className"))
        if "mapClass" not in mat:
            raise UserError(f"{path} has no mapClass variable; give a class map such as classMapping40.mat, or "
                            "a .txt/.json of 894 target ids")
        target = np.asarray(mat["mapClass"]).astype(np.int64).ravel()
        if "className" in mat:
            names = _mat_strings(mat["className"])
    else:
        try:
            text = path.read_text()
            target = np.asarray(json.loads(text) if path.suffix.lower() == ".json" else text.split(), dtype=np.int64)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the class map {path}: {exc}; expected 894 integers") from None
    if target.shape != (NUM_RAW_CLASSES,) or target.min() < 0:
        raise UserError(f"the class map {path} holds {target.size} ids (min {target.min()}); expected one target "
                        f"class 1..K (0 for unlabelled) for each of NYU's {NUM_RAW_CLASSES} classes")
    classes = int(target.max())
    if classes > 255:
        raise UserError(f"the class map {path} maps to {classes} classes; at most 255 fit a uint8 semseg.png")
    if len(names) != classes:
        names = [f"class_{k}" for k in range(1, classes + 1)]
    lookup = np.concatenate([[255], np.where(target > 0, target - 1, 255)]).astype(np.int64)
    return ClassMap(lookup, names, 255)


def _raw_names(f: Any) -> list[str]:
    if "names" not in f:
        return []
    names = []
    for ref in np.asarray(f["names"]).ravel():
        chars = np.asarray(f[ref]).ravel()
        names.append("".join(map(chr, chars)))
    return names


def nyu_samples(f: Any, indices: np.ndarray, split: str, classes: ClassMap, *, depth: str, crop: bool,
                short_side: int | None, skipped: list[str]) -> Iterator[dict[str, Any]]:
    """Shard samples of the labelled images ``indices`` of the open ``nyu_depth_v2_labeled.mat``."""
    depth_key = {"filled": "depths", "raw": "rawDepths"}[depth]
    for index in indices:
        # h5py sees MATLAB's column-major arrays transposed: images [N, 3, W, H], maps [N, W, H]
        rgb = np.ascontiguousarray(np.asarray(f["images"][index]).transpose(2, 1, 0))
        metres = np.asarray(f[depth_key][index], dtype=np.float32).T
        raw = np.asarray(f["labels"][index]).astype(np.int64).T
        if raw.min() < 0 or raw.max() > NUM_RAW_CLASSES:
            skipped.append(f"image {index + 1}: class ids {raw.min()}..{raw.max()} outside 0..{NUM_RAW_CLASSES}")
            continue
        if crop:
            top, bottom, left, right = EIGEN_CROP
            rgb, metres, raw = rgb[top:bottom, left:right], metres[top:bottom, left:right], raw[top:bottom, left:right]
        rgb, metres, raw = resize_aligned(rgb, metres, raw, short_side)
        semseg = classes.lookup[raw]
        meta = {"source": f"nyu_depth_v2_labeled.mat[{index + 1}]", "index": int(index + 1), "depth": depth,
                "classes": len(classes.names)}
        yield encode_sample(f"{split}-{index + 1:04d}", rgb, metres,
                            semseg.astype(np.uint8 if classes.ignore == 255 else np.uint16), meta)


def convert_nyuv2(labeled: str | Path, splits: str | Path, out: str | Path, *, class_map: str | Path | None = None,
                  depth: str = "filled", crop: bool = False, short_side: int | None = None, prefix: str = "nyuv2",
                  overwrite: bool = False, max_size: str = "64MB") -> dict[str, dict]:
    """NYU's labelled ``.mat`` + ``splits.mat`` -> ``out/train`` and ``out/test`` shards (see the module doc)."""
    if depth not in DEPTHS:
        raise UserError(f"depth={depth!r}; choose one of {', '.join(DEPTHS)}")
    labeled, out = Path(labeled), Path(out)
    if not labeled.is_file():
        raise UserError(f"{labeled} does not exist; give NYU's nyu_depth_v2_labeled.mat")
    try:
        f = _h5py().File(labeled, "r")
    except OSError as exc:
        raise UserError(f"{labeled} is not an HDF5 (MATLAB v7.3) file: {exc}; give NYU's nyu_depth_v2_labeled.mat"
                        ) from None
    with f:
        missing = [key for key in ("images", "depths" if depth == "filled" else "rawDepths", "labels") if key not in f]
        if missing:
            raise UserError(f"{labeled} has no {', '.join(missing)} (keys: {sorted(f.keys())}); give NYU's "
                            "nyu_depth_v2_labeled.mat")
        count = f["images"].shape[0]
        if f["images"].shape[1] != 3 or f["labels"].shape != (count, *f["images"].shape[2:]):
            raise UserError(f"{labeled}: images {f['images'].shape} and labels {f['labels'].shape} do not line up "
                            "as NYU's [N, 3, 640, 480] and [N, 640, 480]")
        classes = read_class_map(class_map, _raw_names(f))
        report = {}
        for split, indices in read_splits(splits, count).items():
            skipped: list[str] = []
            samples = nyu_samples(f, indices, split, classes, depth=depth, crop=crop, short_side=short_side,
                                  skipped=skipped)
            report[split] = write_dataset(out / split, prefix, samples, classes.names, max_size=max_size,
                                          max_count=100_000, overwrite=overwrite, skipped=skipped,
                                          what=f"{len(indices)} {split} images of {labeled}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimx.datasets.nyuv2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labeled", help="nyu_depth_v2_labeled.mat")
    parser.add_argument("splits", help="splits.mat (trainNdxs, testNdxs)")
    parser.add_argument("out")
    parser.add_argument("--class-map", help="classMapping40.mat (mapClass, className) or 894 ids in .txt/.json; "
                                            "default: the 894 raw classes")
    parser.add_argument("--depth", choices=DEPTHS, default="filled",
                        help="filled: NYU's hole-filled depths (default); raw: the sensor's, 0 where it saw nothing")
    parser.add_argument("--crop", action="store_true", help="keep only Eigen et al.'s region with valid depth")
    parser.add_argument("--short-side", type=int, help="resize so the short side has this many pixels")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--max-size", default="64MB",
                        help="target shard size (default 64MB: several shards, so several data workers, even for "
                             "small sets)")
    args = parser.parse_args(argv)
    try:
        report = convert_nyuv2(args.labeled, args.splits, args.out, class_map=args.class_map, depth=args.depth,
                               crop=args.crop, short_side=args.short_side, overwrite=args.overwrite,
                               max_size=args.max_size)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, summary in report.items():
        print_summary(summary, Path(args.out) / split, f"{split} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
