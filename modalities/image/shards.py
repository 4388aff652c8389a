"""``mimx image shards SRC OUT``: an image folder (optionally with class subfolders) or a file list to tar shards."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mimx.data.shards import add_shard_arguments, list_sources, print_summary, write_dataset

KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


def encode_image(path: Path, resize: int | None) -> tuple[str, bytes]:
    """Original bytes when the format is kept and no resize is asked, else re-encoded (JPEG or PNG)."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # fails here on a truncated or corrupt file
        fmt = img.format
        if resize is None and fmt in KEEP_FORMATS:
            return KEEP_FORMATS[fmt], data
        if resize is not None and min(img.size) > resize:
            scale = resize / min(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        lossless = fmt in ("PNG", "BMP", "TIFF", "PPM", "GIF") or img.mode in ("RGBA", "LA", "P")
        buf = io.BytesIO()
        if lossless:
            img.save(buf, format="PNG")
            return "png", buf.getvalue()
        img.convert("RGB").save(buf, format="JPEG", quality=92)
        return "jpg", buf.getvalue()


def image_samples(items: list[tuple[Path, int]], classes: list[str], resize: int | None,
                  skipped: list[str]) -> Iterator[dict[str, Any]]:
    for index, (path, label) in enumerate(items):
        try:
            ext, data = encode_image(path, resize)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            skipped.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        sample: dict[str, Any] = {"__key__": f"{index:08d}", ext: data,
                                  "json": {"file": path.name, "label": label}}
        if label >= 0:
            sample["cls"] = str(label)
            if label < len(classes):
                sample["json"]["class"] = classes[label]
        yield sample


def write_image_shards(src: str | Path, out: str | Path, *, prefix: str = "images", max_size: str | int = "256MB",
                       max_count: int = 100_000, resize: int | None = None, shuffle: bool = True, seed: int = 0,
                       overwrite: bool = False,
                       classes_file: str | Path | None = None) -> dict[str, Any]:
    """Write ``OUT/<prefix>-NNNNNN.tar`` shards; returns a summary (shards, counts, skipped files)."""
    src, out = Path(src), Path(out)
    items, classes, _ = list_sources(src, SUFFIXES, "images", classes_file)
    if shuffle:
        random.Random(seed).shuffle(items)
    skipped: list[str] = []
    return write_dataset(out, prefix, image_samples(items, classes, resize, skipped), classes,
                         max_size=max_size, max_count=max_count, overwrite=overwrite, skipped=skipped,
                         what=f"{len(items)} files in {src} (as images)")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mimx image shards",
                                     description="Write an image folder (class subfolders give labels) or a "
                                                 "'path,label' list (.csv/.txt) as tar shards.")
    add_shard_arguments(parser, "folder of images, or of class subfolders of images, or a path,label list", "images")
    parser.add_argument("--resize", type=int, default=None, help="shrink the short side to this many pixels")
    args = parser.parse_args(argv)
    summary = write_image_shards(args.src, args.out, prefix=args.prefix, max_size=args.max_size,
                                 max_count=args.max_count, resize=args.resize, shuffle=not args.no_shuffle,
                                 seed=args.seed, overwrite=args.overwrite,
                                 classes_file=args.classes)
    print_summary(summary, args.out, "images")
    return 0
