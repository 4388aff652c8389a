"""Fashion-MNIST (idx files) to labelled tar shards.

    python -m mimx.datasets.fashion_mnist [OUT] [--src /usr/share/datasets/fashion-mnist]

Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``)
puts the original files in /usr/share/datasets/fashion-mnist/. Writes
``OUT/train/`` (60,000 images, 12 shards) and ``OUT/test/`` (10,000, 2 shards):
28x28 grey PNGs with ``cls`` = class id and ``json`` = {"label", "class"}.
The same reader takes MNIST's idx files.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import numpy as np

from mimx.config import UserError
from mimx.data.shards import ShardWriter
from mimx.datasets.samples import png_bytes

CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")
DEFAULT_SRC = "/usr/share/datasets/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        magic = f.read(4)
        if len(magic) != 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 8:
            raise UserError(f"{path} is not an idx file of unsigned bytes")
        dims = struct.unpack(">" + "I" * magic[3], f.read(4 * magic[3]))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: {data.size} values for shape {dims}")
    return data.reshape(dims)


def _find(src: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (src / name).exists():
            return src / name
    raise UserError(f"{src / stem}.gz not found; install it with `apt-get install dataset-fashion-mnist` "
                    "or pass --src to the folder holding the idx files")


def convert(out: str | Path, src: str | Path = DEFAULT_SRC, *, per_shard: int = 5000, overwrite: bool = False,
            classes: tuple[str, ...] = CLASSES) -> dict[str, list[str]]:
    """Write train and test shards; returns their paths."""
    src, out = Path(src), Path(out)
    result = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(src, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(src, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise UserError(f"{split}: {len(images)} images but {len(labels)} labels in {src}")
        with ShardWriter(out / split / "fmnist", max_count=per_shard, overwrite=overwrite) as writer:
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                writer.write({"__key__": f"fmnist_{split}_{i:05d}", "png": png_bytes(image), "cls": str(int(label)),
                              "json": {"label": int(label), "class": classes[int(label)]}})
        result[split] = writer.shards
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="data/fashion_mnist")
    parser.add_argument("--src", default=DEFAULT_SRC)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = convert(args.out, args.src, overwrite=args.overwrite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, shards in result.items():
        print(f"{split}: {len(shards)} shard(s) in {Path(args.out) / split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
