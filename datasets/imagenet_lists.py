"""ImageNet-1k (ILSVRC 2012) file lists and ``classes.json``, with the validation labels put right.

Training images sit in class folders (``train/<wnid>/*.JPEG``), so ``mimx image shards train/ OUT`` labels
them by the sorted WordNet ids, as torchvision's ``ImageFolder`` does. The 50,000 validation images come
as one flat folder, and their labels must be mapped into that same order. Sources of the labels:

- ``--devkit``: ``ILSVRC2012_devkit_t12`` (``data/meta.mat``: the synsets with their ``ILSVRC2012_ID``,
  ``WNID`` and ``num_children``; ``data/ILSVRC2012_validation_ground_truth.txt``: an ILSVRC2012_ID per image
  in file-name order). The ground truth counts in the devkit's own synset order, not the sorted ids:
  this is the mapping that scripts get wrong.
- ``--loc-csv``: Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first word of the
  prediction string is the image's WordNet id).
- neither: ``val/`` already in class folders (``valprep.sh``).

Writes ``OUT/train.csv`` and ``OUT/val.csv`` (``path,label``, as ``read_file_list`` reads them) and
``OUT/classes.json`` (WordNet ids in label order) plus ``OUT/class_names.json`` (the devkit's words, when
given). The val labels use the train folders' order; a val image whose class has no train folder, or
without a label, is an error naming it.

    python -m mimx.datasets.imagenet_lists /data/imagenet OUT --devkit ILSVRC2012_devkit_t12
    mimx image shards OUT/val.csv /data/imagenet_shards/val --resize 256
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from mimx.config import UserError
from mimx.data.stream import write_classes, write_file_list

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _images(folder: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(folder)
                  if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)


def class_folders(folder: Path) -> list[str]:
    """The sorted class folder names of ``folder`` (WordNet ids for ImageNet)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def read_devkit(devkit: Path) -> tuple[dict[int, str], dict[str, str], list[int]]:
    """(ILSVRC2012_ID -> WNID of the 1000 leaf classes, WNID -> words, validation ground-truth ids)."""
    meta, truth = devkit / "data" / "meta.mat", devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    for path in (meta, truth):
        if not path.is_file():
            raise UserError(f"{path} does not exist; give the unpacked ILSVRC2012_devkit_t12 folder")
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise UserError("reading the devkit's meta.mat needs scipy: pip install scipy") from exc
    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        fields = {name: synsets[name] for name in ("ILSVRC2012_ID", "WNID", "words", "num_children")}
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"{meta} has no synsets with ILSVRC2012_ID, WNID, words and num_children ({exc}); "
                        "is it the ILSVRC 2012 devkit's meta.mat?") from None
    leaves = np.asarray(fields["num_children"]).astype(int) == 0
    ids = np.asarray(fields["ILSVRC2012_ID"]).astype(int)[leaves]
    wnids = [str(w) for w in np.asarray(fields["WNID"])[leaves]]
    words = [str(w) for w in np.asarray(fields["words"])[leaves]]
    try:
        ground_truth = [int(line) for line in truth.read_text().split()]
    except ValueError as exc:
        raise UserError(f"{truth}: {exc}; expected one ILSVRC2012_ID per line") from None
    return dict(zip(ids.tolist(), wnids, strict=True)), dict(zip(wnids, words, strict=True)), ground_truth


def read_loc_csv(path: Path) -> dict[str, str]:
    """Image stem -> WNID from Kaggle's ``LOC_val_solution.csv``."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; give Kaggle's LOC_val_solution.csv")
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or []):
            raise UserError(f"{path} has no ImageId and PredictionString columns; give Kaggle's LOC_val_solution.csv")
        return {row["ImageId"]: (row["PredictionString"].split() or [""])[0] for row in reader}


def val_labels(val: Path, wnids: list[str], *, devkit: Path | None, loc_csv: Path | None,
               ) -> tuple[list[tuple[Path, int]], dict[str, str]]:
    """(validation ``(file, label)`` in the train folders' class order, WNID -> words when the devkit gave them)."""
    index = {wnid: i for i, wnid in enumerate(wnids)}
    words: dict[str, str] = {}
    if devkit is None and loc_csv is None:
        folders = class_folders(val)
        unknown = sorted(set(folders) - set(index))
        if not folders or unknown:
            raise UserError(f"{val} is a flat folder: give --devkit or --loc-csv for its labels" if not folders else
                            f"{val} has class folders the train folder lacks: {unknown[:3]}")
        return [(f, index[w]) for w in folders for f in _images(val / w)], words
    files = _images(val)
    if not files:
        raise UserError(f"no validation images (.JPEG) in {val}")
    if devkit is not None:
        by_id, words, truth = read_devkit(devkit)
        if len(truth) != len(files):
            raise UserError(f"{devkit}: {len(truth)} ground-truth lines for {len(files)} images in {val}; "
                            "the validation folder must hold all 50,000 ILSVRC2012_val_*.JPEG files")
        found = [by_id.get(i, "") for i in truth]
    else:
        by_stem = read_loc_csv(loc_csv)
        found = [by_stem.get(f.stem, "") for f in files]
    items = []
    for file, wnid in zip(files, found, strict=True):
        if wnid not in index:
            raise UserError(f"{file.name}: class {wnid or '(none)'} is not among the {len(wnids)} train folders; "
                            "are the train folder and the label source of the same release?")
        items.append((file, index[wnid]))
    return items, words


def write_imagenet_lists(root: str | Path, out: str | Path, *, devkit: str | Path | None = None,
                         loc_csv: str | Path | None = None, overwrite: bool = False) -> dict[str, int]:
    """``out/{train,val}.csv`` and ``classes.json`` for ``root/train`` and ``root/val``; returns the counts."""
    root, out = Path(root), Path(out)
    train, val = root / "train", root / "val"
    for folder in (train, val):
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; give the ImageNet root holding train/ and val/")
    wnids = class_folders(train)
    if not wnids:
        raise UserError(f"{train} has no class folders (train/<wnid>/*.JPEG)")
    names = ("train.csv", "val.csv", "classes.json")
    existing = [out / n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists; write to another folder or pass --overwrite")
    train_items = [(f, i) for i, wnid in enumerate(wnids) for f in _images(train / wnid)]
    val_items, words = val_labels(val, wnids, devkit=Path(devkit) if devkit else None,
                                  loc_csv=Path(loc_csv) if loc_csv else None)
    out.mkdir(parents=True, exist_ok=True)
    write_file_list(out / "train.csv", train_items)
    write_file_list(out / "val.csv", val_items)
    write_classes(out, wnids)
    if words:
        (out / "class_names.json").write_text(json.dumps([words.get(w, w) for w in wnids], indent=1))
    return {"classes": len(wnids), "train": len(train_items), "val": len(val_items)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimx.datasets.imagenet_lists", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="folder holding train/<wnid>/ and val/")
    parser.add_argument("out", help="folder for train.csv, val.csv, classes.json")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--devkit", help="the unpacked ILSVRC2012_devkit_t12 folder")
    labels.add_argument("--loc-csv", help="Kaggle's LOC_val_solution.csv")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        counts = write_imagenet_lists(args.root, args.out, devkit=args.devkit, loc_csv=args.loc_csv,
                                      overwrite=args.overwrite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {counts['train']} train and {counts['val']} val images of {counts['classes']} classes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
