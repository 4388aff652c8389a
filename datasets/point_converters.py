"""Converters from the point-cloud benchmarks' released layouts to mimx shards.

- ``scanobjectnn``: ScanObjectNN's ``.h5`` files (``data`` ``[N, 2048, 3]`` float, ``label`` ``[N]``;
  e.g. ``main_split/training_objectdataset_augmentedrot_scale75.h5``), one file per split.
- ``shapenet``: ShapeNet-55/34 as Point-BERT and Point-MAE ship it: a folder of ``.npy`` clouds
  (``shapenet_pc/<synset>-<model>.npy``, ``[8192, 3]``) and split lists (``train.txt``, ``test.txt``) of
  those file names; the label is the index of the synset among the sorted synsets of the lists.
- ``modelnet``: ModelNet40 (or ModelNet10) in either layout, detected from ROOT:
  ``modelnet40_normal_resampled`` as PointNet++ and Point-MAE use it (``modelnet40_shape_names.txt``, the
  ``modelnet40_train.txt``/``modelnet40_test.txt`` lists of names like ``flower_pot_0001``, clouds
  ``<class>/<name>.txt`` of ``x,y,z,nx,ny,nz`` lines; xyz is kept; ``--subset modelnet10`` takes the
  ``modelnet10_*`` lists of the same folder), or the original mesh release
  (``<class>/{train,test}/<class>_NNNN.off``), sampled with ``--points`` points on each surface, seeded per file.

Each writes ``OUT/<split>/<prefix>-NNNNNN.tar`` (``npy`` float32 + ``cls`` + ``json``) and
``classes.json``. A cloud that is missing or unreadable is skipped and listed.

    python -m mimx.datasets.point_converters scanobjectnn train.h5 test.h5 OUT
    python -m mimx.datasets.point_converters shapenet ShapeNet-55 shapenet_pc OUT
    python -m mimx.datasets.point_converters modelnet modelnet40_normal_resampled OUT
    python -m mimx.datasets.point_converters modelnet ModelNet40 OUT --points 8192
"""

from __future__ import annotations

import argparse
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mimx.config import UserError
from mimx.data.shards import print_summary, write_dataset
from mimx.modalities.points.io import encode_npy, read_off, sample_surface

SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet"]


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise UserError("reading ScanObjectNN .h5 files needs h5py: pip install 'mimx[points]'") from exc
    return h5py


def _check_scanobjectnn(path: Path) -> None:
    """Refuse, before anything is written, a file that is not a ScanObjectNN .h5."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; give the ScanObjectNN training and test .h5 files")
    try:
        with _h5py().File(path, "r") as f:
            keys = list(f.keys())
    except OSError as exc:
        raise UserError(f"{path} is not an HDF5 file ({exc}); give ScanObjectNN's .h5 files, e.g. "
                        "training_objectdataset.h5 and test_objectdataset.h5") from None
    if "data" not in keys or "label" not in keys:
        raise UserError(f"{path} has no 'data' and 'label' datasets (keys: {keys}); is it a ScanObjectNN .h5 file?")


def scanobjectnn_samples(path: Path, split: str) -> Iterator[dict[str, Any]]:
    with _h5py().File(path, "r") as f:
        data, labels = f["data"], np.asarray(f["label"]).reshape(-1)
        if len(data) != len(labels):
            raise UserError(f"{path}: {len(data)} clouds but {len(labels)} labels")
        for index in range(len(data)):
            points = np.asarray(data[index], dtype=np.float32)[:, :3]
            label = int(labels[index])
            yield {"__key__": f"{split}-{index:06d}", "npy": encode_npy(points), "cls": str(label),
                   "json": {"label": label, "source": f"{path.name}[{index}]"}}


def convert_scanobjectnn(train: str | Path, test: str | Path, out: str | Path, *, prefix: str = "scanobjectnn",
                         overwrite: bool = False, max_size: str = "64MB") -> dict[str, dict]:
    """ScanObjectNN ``train`` and ``test`` .h5 files -> ``out/train`` and ``out/test`` shards."""
    out = Path(out)
    report = {}
    pairs = (("train", Path(train)), ("test", Path(test)))
    for _, path in pairs:
        _check_scanobjectnn(path)
    for split, path in pairs:
        report[split] = write_dataset(out / split, prefix, scanobjectnn_samples(path, split), SCANOBJECTNN_CLASSES,
                                      max_size=max_size, max_count=100_000, overwrite=overwrite, skipped=[],
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
                     overwrite: bool = False, max_size: str = "64MB") -> dict[str, dict]:
    """ShapeNet-55/34 (``lists``: folder with ``train.txt``/``test.txt``; ``clouds``: the .npy folder) -> shards."""
    lists, clouds, out = Path(lists), Path(clouds), Path(out)
    splits = {split: _read_list(lists / f"{split}.txt") for split in ("train", "test")}
    synsets = sorted({name.split("-", 1)[0] for names in splits.values() for name in names})
    report = {}
    for split, names in splits.items():
        skipped: list[str] = []
        report[split] = write_dataset(out / split, prefix, shapenet_samples(names, clouds, synsets, split, skipped),
                                      synsets, max_size=max_size, max_count=100_000, overwrite=overwrite,
                                      skipped=skipped, what=f"{len(names)} clouds of {lists / split}.txt")
    return report


MODELNET_SUBSETS = ("modelnet40", "modelnet10")
MODELNET_POINTS = 8192  # surface points per mesh, as `mimx points shards --mesh-points`
_MODELNET_NAME = re.compile(r"(.+)_\d+")  # flower_pot_0001 -> flower_pot


def _modelnet_layout(root: Path, subset: str | None) -> tuple[str, str | None]:
    """``("resampled", subset)`` or ``("meshes", None)``; UserError naming what ROOT lacks otherwise."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the modelnet40_normal_resampled folder or the ModelNet40 "
                        "mesh folder (<class>/train/*.off)")
    present = [s for s in MODELNET_SUBSETS if (root / f"{s}_shape_names.txt").is_file()]
    if subset is not None or present:
        subset = subset or present[0]
        needed = [f"{subset}_{part}.txt" for part in ("shape_names", "train", "test")]
        missing = [name for name in needed if not (root / name).is_file()]
        if missing:
            raise UserError(f"{root} lacks {', '.join(missing)}; the {subset} layout needs {', '.join(needed)} "
                            "next to the class folders (as in modelnet40_normal_resampled.zip)")
        return "resampled", subset
    if any((d / split).is_dir() for d in root.iterdir() if d.is_dir() for split in ("train", "test")):
        return "meshes", None
    inside = [d.name for d in sorted(root.iterdir()) if d.is_dir() and
              (any((d / f"{s}_shape_names.txt").is_file() for s in MODELNET_SUBSETS) or
               any((c / "train").is_dir() for c in d.iterdir() if c.is_dir()))]
    hint = f"; did you mean {root / inside[0]}?" if inside else ""
    raise UserError(f"{root} is neither ModelNet layout: expected modelnet40_shape_names.txt with "
                    "modelnet40_train.txt and modelnet40_test.txt (modelnet10_* for ModelNet10) and "
                    f"<class>/<name>.txt clouds (modelnet40_normal_resampled), or <class>/train/*.off and "
                    f"<class>/test/*.off meshes (the ModelNet40 release){hint}")


def read_modelnet_txt(data: bytes, columns: int = 6) -> np.ndarray:
    """A ``[N, columns]`` float32 array of comma-separated lines (parsed as float64, as ``np.loadtxt``)."""
    lines = [line for line in data.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty file")
    counts = {line.count(b",") + 1 for line in lines}
    if counts != {columns}:
        raise ValueError(f"expected {columns} comma-separated columns per line, found {sorted(counts)}")
    values = np.array(b" ".join(lines).replace(b",", b" ").split(), dtype=np.float64)
    if values.size != len(lines) * columns:
        raise ValueError(f"expected {columns} values per line, found {values.size} values in {len(lines)} lines")
    return values.reshape(len(lines), columns).astype(np.float32)


def modelnet_resampled_samples(root: Path, names: list[str], classes: list[str], split: str,
                               skipped: list[str]) -> Iterator[dict[str, Any]]:
    index = {c: i for i, c in enumerate(classes)}
    for name in names:
        cls = _MODELNET_NAME.fullmatch(name).group(1)
        path = root / cls / f"{name}.txt"
        try:
            points = read_modelnet_txt(path.read_bytes())[:, :3]
        except (OSError, ValueError) as exc:
            skipped.append(f"{path}: {type(exc).__name__}: {exc}"[:300])
            continue
        if not np.isfinite(points).all(axis=1).any():
            skipped.append(f"{path}: no finite point")
            continue
        yield {"__key__": f"{split}-{name}", "npy": encode_npy(points), "cls": str(index[cls]),
               "json": {"label": index[cls], "class": cls, "source": f"{cls}/{name}.txt"}}


def _modelnet_list(path: Path, classes: list[str], class_file: str) -> list[str]:
    """The sample names of a ModelNet split list, each checked to be ``<class>_NNNN`` of a known class."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    for number, name in enumerate(names, 1):
        match = _MODELNET_NAME.fullmatch(name)
        if match is None or match.group(1) not in classes:
            raise UserError(f"{path} line {number}: {name!r} is not <class>_NNNN with a class of {class_file}; "
                            "fix the line or the class list")
    return names


def read_modelnet_off(data: bytes, points: int, seed: int) -> np.ndarray:
    """``points`` surface samples of an OFF mesh (``read_off`` reads the ``OFF490 518 0`` header of ModelNet)."""
    vertices, triangles = read_off(data)
    if len(triangles) == 0:
        raise ValueError("the mesh has no face")
    return sample_surface(vertices, triangles, points, seed)


def modelnet_mesh_samples(files: list[tuple[Path, int]], root: Path, classes: list[str], split: str, points: int,
                          skipped: list[str]) -> Iterator[dict[str, Any]]:
    for path, label in files:
        source = path.relative_to(root).as_posix()
        try:
            cloud = read_modelnet_off(path.read_bytes(), points, seed=zlib.crc32(source.encode()))
        except (OSError, ValueError, IndexError) as exc:
            skipped.append(f"{path}: {type(exc).__name__}: {exc}"[:300])
            continue
        yield {"__key__": f"{split}-{path.stem}", "npy": encode_npy(cloud), "cls": str(label),
               "json": {"label": label, "class": classes[label], "source": source}}


def convert_modelnet(root: str | Path, out: str | Path, *, subset: str | None = None, points: int = MODELNET_POINTS,
                     prefix: str = "modelnet", overwrite: bool = False, max_size: str = "64MB") -> dict[str, dict]:
    """ModelNet40/10 (``modelnet40_normal_resampled`` or the ``.off`` release, detected) -> ``out/{train,test}``."""
    root, out = Path(root), Path(out)
    if subset is not None and subset not in MODELNET_SUBSETS:
        raise UserError(f"--subset must be one of {', '.join(MODELNET_SUBSETS)}, got {subset!r}")
    if points < 1:
        raise UserError(f"--points must be at least 1, got {points}")
    layout, subset = _modelnet_layout(root, subset)
    report = {}
    if layout == "resampled":
        class_file = f"{subset}_shape_names.txt"
        classes = [c.strip() for c in (root / class_file).read_text().splitlines() if c.strip()]
        for split in ("train", "test"):
            names = _modelnet_list(root / f"{subset}_{split}.txt", classes, class_file)
            skipped: list[str] = []
            samples = modelnet_resampled_samples(root, names, classes, split, skipped)
            report[split] = write_dataset(out / split, prefix, samples, classes, max_size=max_size, max_count=100_000,
                                          overwrite=overwrite, skipped=skipped,
                                          what=f"{len(names)} clouds of {root / f'{subset}_{split}.txt'}")
        return report
    # the sorted class folders: the order of modelnet40_shape_names.txt, so both layouts give the same labels
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__")) and
                     any((d / split).is_dir() for split in ("train", "test")))
    for split in ("train", "test"):
        files = [(f, label) for label, c in enumerate(classes) for f in sorted((root / c / split).glob("*.off"))]
        if not files:
            raise UserError(f"no {root}/<class>/{split}/*.off meshes; the ModelNet40 release has train/ and test/ "
                            "folders of .off files in each class folder")
        skipped = []
        samples = modelnet_mesh_samples(files, root, classes, split, points, skipped)
        report[split] = write_dataset(out / split, prefix, samples, classes, max_size=max_size, max_count=100_000,
                                      overwrite=overwrite, skipped=skipped,
                                      what=f"{len(files)} meshes in {root}/<class>/{split}")
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
    modelnet = sub.add_parser("modelnet", help="ModelNet40/10: modelnet40_normal_resampled or the .off meshes")
    modelnet.add_argument("root", help="the modelnet40_normal_resampled folder or the ModelNet40 mesh folder")
    modelnet.add_argument("out")
    modelnet.add_argument("--subset", choices=MODELNET_SUBSETS,
                          help="which lists of a normal_resampled folder (default: modelnet40 when present)")
    modelnet.add_argument("--points", type=int, default=MODELNET_POINTS,
                          help=f"surface points sampled per mesh (default {MODELNET_POINTS}; .off layout only)")
    for p in (scan, shapenet, modelnet):
        p.add_argument("--overwrite", action="store_true")
        p.add_argument("--max-size", default="64MB",
                       help="target shard size (default 64MB: several shards, so several data workers, even for "
                            "small sets)")
    args = parser.parse_args(argv)
    try:
        if args.layout == "scanobjectnn":
            report = convert_scanobjectnn(args.train, args.test, args.out, overwrite=args.overwrite,
                                          max_size=args.max_size)
        elif args.layout == "shapenet":
            report = convert_shapenet(args.lists, args.clouds, args.out, overwrite=args.overwrite,
                                      max_size=args.max_size)
        else:
            report = convert_modelnet(args.root, args.out, subset=args.subset, points=args.points,
                                      overwrite=args.overwrite, max_size=args.max_size)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, summary in report.items():
        print_summary(summary, Path(args.out) / split, f"{split} clouds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
