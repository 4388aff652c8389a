"""``mimx multimodal shards SRC OUT``: aligned folders (MultiMAE's layout) to tar shards.

SRC holds one folder per modality, each with the same class subfolders and file stems
(``SRC/<modality>/<class>/<stem>.<ext>``, as MultiMAE's ``<split>/<modality>/<class>/<image>``; files
directly in ``SRC/<modality>/`` are unlabelled). Files with the same class and stem form one sample,
stored under ``<modality>.<ext>`` with the original bytes, plus ``cls`` and ``json``. A sample whose maps
differ in size, or whose file cannot be opened, is skipped and listed; a stem missing from some
modality is written without it (the loader's ``data.missing`` decides what to do with it).
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mimx.config import UserError, name_list
from mimx.data.shards import add_shard_arguments, class_order, print_summary, read_class_names, write_dataset

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".npy")


def map_size(path: Path, data: bytes) -> tuple[int, int]:
    """(height, width) of a map file, read from its header."""
    if path.suffix.lower() == ".npy":
        array = np.load(io.BytesIO(data), mmap_mode=None, allow_pickle=False)
        return int(array.shape[0]), int(array.shape[1])
    with Image.open(io.BytesIO(data)) as image:
        return image.height, image.width


def index_folders(src: Path, modalities: list[str]) -> tuple[dict[tuple[str, str], dict[str, Path]], list[str]]:
    """``{(class, stem): {modality: file}}`` and the sorted class names."""
    missing = [m for m in modalities if not (src / m).is_dir()]
    if missing:
        raise UserError(f"{src} has no folder for {missing}; expected SRC/<modality>/<class>/<file> "
                        f"(found {sorted(d.name for d in src.iterdir() if d.is_dir())})")
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    classes: set[str] = set()
    for modality in modalities:
        for path in sorted((src / modality).rglob("*")):
            if path.suffix.lower() not in SUFFIXES or not path.is_file():
                continue
            rel = path.relative_to(src / modality)
            cls = rel.parts[0] if len(rel.parts) > 1 else ""
            if cls:
                classes.add(cls)
            groups.setdefault((cls, str(rel.with_suffix(""))), {})[modality] = path
    if not groups:
        raise UserError(f"no maps ({', '.join(SUFFIXES)}) found under {src}/{{{','.join(modalities)}}}")
    return groups, sorted(classes)


def aligned_samples(groups: dict[tuple[str, str], dict[str, Path]], classes: list[str],
                    skipped: list[str]) -> Iterator[dict[str, Any]]:
    index = {c: i for i, c in enumerate(classes)}
    for number, ((cls, stem), files) in enumerate(groups.items()):
        sample: dict[str, Any] = {"__key__": f"{number:08d}"}
        sizes = {}
        path = None
        try:
            for modality, path in files.items():
                data = path.read_bytes()
                sizes[modality] = map_size(path, data)
                sample[f"{modality}{path.suffix.lower()}"] = data
        except Exception as exc:  # an unreadable map skips its sample, never the run
            skipped.append(f"{path or stem}: {type(exc).__name__}: {exc}"[:300])
            continue
        if len(set(sizes.values())) > 1:
            skipped.append(f"{stem}: maps differ in size {sizes}; resize them to one size")
            continue
        label = index.get(cls, -1)
        sample["json"] = {"label": label, "stem": stem, "modalities": sorted(files)}
        if label >= 0:
            sample["cls"] = str(label)
        yield sample


def write_multimodal_shards(src: str | Path, out: str | Path, modalities: list[str], *, prefix: str = "aligned",
                            max_size: str | int = "256MB", max_count: int = 100_000, shuffle: bool = True,
                            seed: int = 0, overwrite: bool = False,
                            classes_file: str | Path | None = None) -> dict[str, Any]:
    """Write ``OUT/<prefix>-NNNNNN.tar``; returns ``{"shards", "samples", "classes", "skipped"}``.

    ``classes_file``: another split's ``classes.json``, numbering the class folders as that split does.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder of modality folders")
    groups, classes = index_folders(src, modalities)
    classes = class_order(classes, read_class_names(Path(classes_file)) if classes_file else None, src)
    if shuffle:
        items = list(groups.items())
        random.Random(seed).shuffle(items)
        groups = dict(items)
    skipped: list[str] = []
    return write_dataset(out, prefix, aligned_samples(groups, classes, skipped), classes, max_size=max_size,
                         max_count=max_count, overwrite=overwrite, skipped=skipped,
                         what=f"{len(groups)} aligned samples in {src}")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mimx multimodal shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_arguments(parser, "folder with one subfolder per modality", "aligned")
    parser.add_argument("--modalities", default="rgb,depth,semseg", help="modality folders (default rgb,depth,semseg)")
    args = parser.parse_args(argv)
    summary = write_multimodal_shards(args.src, args.out, name_list(args.modalities),
                                      prefix=args.prefix, max_size=args.max_size, max_count=args.max_count,
                                      shuffle=not args.no_shuffle, seed=args.seed, overwrite=args.overwrite,
                                      classes_file=args.classes)
    print_summary(summary, args.out, "aligned samples")
    return 0
