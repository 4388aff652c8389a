"""Converters from the point-cloud benchmarks' released layouts to mimx shards.

- ``scanobjectnn``: ScanObjectNN's ``.h5`` files (``data`` ``[N, 2048, 3]`` float, ``label`` ``[N]``;
  e.g. ``main_split/training_objectdataset_augmentedrot_scale75.h5``), one file per split.
- ``shapenet``: ShapeNet-55/34 as Point-BERT and Point-MAE ship it: a folder of ``.npy`` clouds
  (``shapenet_pc/<synset>-<model>.npy``, ``[8192, 3]``) and split lists (``train.txt``, ``test.txt``) of
  those file names; the label is the index of the synset among the sorted synsets of the lists.

Each writes ``OUT/<split>/<prefix>-NNNNNN.tar`` (``npy`` float32 + ``cls`` + ``json``) and
``classes.json``. A cloud that is missing or unreadable is skipped and listed.

    python -m mimx.datasets.point_converters scanobjectnn train.h5 test.h5 OUT
    python -m mimx.datasets.point_converters shapenet ShapeNet-55 shapenet_pc OUT
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mimx.config import UserError
from mimx.data.shards import print_summary, write_dataset
from mimx.modalities.points.io import encode_npy

SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet"]


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise UserError("reading ScanObjectNN .h5 files needs h5py: pip install 'mimx[points]'") from exc
    return h5py


def scanobjectnn_samples(path: Path, split: str) -> Iterator[dict[str, Any]]:
    with _h5py().File(path, "r") as f:
        if "data" not in f or "label" not in f:
            raise UserError(f"{path} has no 'data' and 'label' datasets (keys: {list(f.keys())}); is it a "
                            "ScanObjectNN .h5 file?")
        data, labels = f["data"], np.asarray(f["label"]).reshape(-1)
        if len(data) != len(labels):
            raise UserError(f"{path}: {len(data)} clouds but {len(labels)} labels")
        for index in range(len(data)):
            points = np.asarray(data[index], dtype=np.float32)[:, :3]
            label = int(labels[index])
            yield {"__key__": f"{split}-{index:06d}", "npy": encode_npy(points), "cls": str(label),
                   "json": {"label": label, "source": f"{path.name}[{index}]"}}


def convert_scanobjectnn(train: str | Path, test: str | Path, out: str | Path, *, prefix: str = "scanobjectnn",
                         overwrite: bool = False) -> dict[str, dict]:
    """ScanObjectNN ``train`` and ``test`` .h5 files -> ``out/train`` and ``out/test`` shards."""
    out = Path(out)
    report = {}
    for split, path in (("train", Path(train)), ("test", Path(test))):
        if not path.is_file():
            raise UserError(f"{path} does not exist; give the ScanObjectNN training and test .h5 files")
        report[split] = write_dataset(out / split, prefix, scanobjectnn_samples(path, split), SCANOBJECTNN_CLASSES,
                                      max_size="256MB", max_count=100_000, overwrite=overwrite, skipped=[],
                                      what=f"clouds in {path}")
    return report


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"split list {path} does not exist (ShapeNet-55 ships train.txt and test.txt)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def shapenet_samples(names: list[str], clouds: Path, synsets: list[str], split: str,
                     skipped: list[str]) -> Iterator[dict[str, Any]]:
    index = {s: i for i, s in enumerate(synsets)}
    for name in names:
        path = clouds / name
        try:
            points = np.load(path, allow_pickle=False).astype(np.float32)[:, :3]
        except (OSError, ValueError, IndexError) as exc:
            skipped.append(f"{path}: {type(exc).__name__}: {exc}"[:300])
            continue
        synset = name.split("-", 1)[0]
        label = index[synset]
        yield {"__key__": f"{split}-{Path(name).stem}", "npy": encode_npy(points), "cls": str(label),
               "json": {"label": label, "synset": synset, "source": name}}


def convert_shapenet(lists: str | Path, clouds: str | Path, out: str | Path, *, prefix: str = "shapenet",
                     overwrite: bool = False) -> dict[str, dict]:
    """ShapeNet-55/34 (``lists``: folder with ``train.txt``/``test.txt``; ``clouds``: the .npy folder) -> shards."""
    lists, clouds, out = Path(lists), Path(clouds), Path(out)
    splits = {split: _read_list(lists / f"{split}.txt") for split in ("train", "test")}
    synsets = sorted({name.split("-", 1)[0] for names in splits.values() for name in names})
    report = {}
    for split, names in splits.items():
        skipped: list[str] = []
        report[split] = write_dataset(out / split, prefix, shapenet_samples(names, clouds, synsets, split, skipped),
                                      synsets, max_size="256MB", max_count=100_000, overwrite=overwrite,
                                      skipped=skipped, what=f"{len(names)} clouds of {lists / split}.txt")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimx.datasets.point_converters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="layout", required=True)
    scan = sub.add_parser("scanobjectnn", help="ScanObjectNN .h5 files")
    scan.add_argument("train")
    scan.add_argument("test")
    scan.add_argument("out")
    shapenet = sub.add_parser("shapenet", help="ShapeNet-55/34 .npy clouds + split lists")
    shapenet.add_argument("lists", help="folder with train.txt and test.txt")
    shapenet.add_argument("clouds", help="folder of <synset>-<model>.npy files")
    shapenet.add_argument("out")
    for p in (scan, shapenet):
        p.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.layout == "scanobjectnn":
            report = convert_scanobjectnn(args.train, args.test, args.out, overwrite=args.overwrite)
        else:
            report = convert_shapenet(args.lists, args.clouds, args.out, overwrite=args.overwrite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, summary in report.items():
        print_summary(summary, Path(args.out) / split, f"{split} clouds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
