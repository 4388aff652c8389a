"""A labelled point-cloud shape benchmark built offline from real meshes.

No ModelNet, ShapeNet or ScanObjectNN can be downloaded here, so the classes are real scanned and
modelled meshes that install from packages:

- ``pymeshlab`` (pip; ``pymeshlab/tests/sample_meshes``): airplane, bone, bunny, cow, and a face
  range scan: 5 classes, always available with ``pip install 'mimx[points]'``;
- Debian's ``libcgal-demo`` (``apt-get install libcgal-demo``; meshes inside
  ``/usr/share/doc/libcgal-dev/data.tar.gz``): armadillo, bear, bull, camel, chinese dragon,
  dinosaur, diplodocus, elephant, elk, hand, head, homer, kitten, lion, man, devil mannequin,
  mushroom, pig, triceratops, turbine: 20 more.

pyvista's example meshes (airplane, ant, ...) are left out: pyvista pulls in VTK (hundreds of MB) for
files a few kB long.

Class = object. Every instance is a fresh draw from the object's surface (area-weighted uniform
samples) under a random pose and degradation, the kind of variation scans of one object show:

- rotation: a uniform spin about the up axis and a tilt of up to 20 degrees;
- scale: per-axis factors in [0.8, 1.25];
- partial view (probability 0.5): the points beyond a random plane are cut away, keeping 55-100 %;
- noise: Gaussian jitter with a standard deviation of up to 1 % of the radius;
- density: 1024 to 4096 points per cloud.

Splits are drawn with disjoint seeds (train / val / test), so no instance is shared; the test split
is meant to be scored once. Layout: ``OUT/{train,val,test}/shapes-NNNNNN.tar`` (``npy`` float32
``[n, 3]`` + ``cls`` + ``json`` with the class name and the draw) and ``OUT/classes.json``.

    python -m mimx.datasets.shapes data/shapes --source all --train 48 --val 16 --test 16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mimx.config import UserError
from mimx.data.shards import write_dataset
from mimx.modalities.points.clouds import normalize_unit_sphere, rotation_matrix
from mimx.modalities.points.io import decode_points, encode_npy

CGAL_DATA = Path("/usr/share/doc/libcgal-dev/data.tar.gz")
PYMESHLAB_MESHES = {"airplane": "airplane.obj", "bone": "bone.ply", "bunny": "bunny.obj", "cow": "cow.obj",
                    "face_scan": "rangemaps/face000.ply"}
CGAL_MESHES = {
    "armadillo": "data/meshes/armadillo.off", "bear": "data/meshes/bear.off", "bull": "data/meshes/bull.off",
    "camel": "data/meshes/camel.off", "dragon": "data/meshes/ChineseDragon-10kv.off",
    "dinosaur": "data/meshes/dino.off", "diplodocus": "data/meshes/diplodocus.off",
    "elephant": "data/meshes/elephant.off", "elk": "data/meshes/elk.off", "hand": "data/meshes/hand.off",
    "head": "data/meshes/head.off", "homer": "data/meshes/homer.off", "kitten": "data/points_3/kitten.off",
    "lion": "data/meshes/lion.off", "man": "data/meshes/man.off", "devil": "data/meshes/mannequin-devil.off",
    "mushroom": "data/meshes/mushroom.off", "pig": "data/meshes/pig.off",
    "triceratops": "data/meshes/triceratops.off", "turbine": "data/meshes/turbine.off",
}
SOURCES = ("pymeshlab", "cgal", "all")
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
SURFACE_POINTS = 20000


def pymeshlab_folder() -> Path:
    """Where pymeshlab's sample meshes lie (found without importing pymeshlab)."""
    spec = importlib.util.find_spec("pymeshlab")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the shape benchmark needs pymeshlab's sample meshes: pip install 'mimx[points]'")
    return Path(list(spec.submodule_search_locations)[0]) / "tests" / "sample_meshes"


def load_meshes(source: str = "pymeshlab", surface_points: int = SURFACE_POINTS) -> dict[str, np.ndarray]:
    """Dense surface samples ``[surface_points, 3]`` in the unit sphere per class name."""
    if source not in SOURCES:
        raise UserError(f"source {source!r}; choose one of {', '.join(SOURCES)}")
    clouds: dict[str, np.ndarray] = {}
    if source in ("pymeshlab", "all"):
        folder = pymeshlab_folder()
        for name, rel in PYMESHLAB_MESHES.items():
            path = folder / rel
            clouds[name] = decode_points(path.read_bytes(), path.suffix[1:], mesh_points=surface_points, seed=7)
    if source in ("cgal", "all"):
        if not CGAL_DATA.exists():
            raise UserError(f"{CGAL_DATA} is missing: apt-get install libcgal-demo (or use --source pymeshlab)")
        with tarfile.open(CGAL_DATA) as tar:
            for name, member in CGAL_MESHES.items():
                data = tar.extractfile(member).read()
                clouds[name] = decode_points(data, "off", mesh_points=surface_points, seed=7)
    return {name: normalize_unit_sphere(points).astype(np.float32) for name, points in clouds.items()}


def draw_instance(surface: np.ndarray, rng: np.random.Generator, up_axis: int = 1) -> tuple[np.ndarray, dict]:
    """One degraded, posed instance of an object from its dense surface samples."""
    angles = np.zeros(3)
    angles[up_axis] = rng.uniform(0, 2 * np.pi)
    tilt_axis = (up_axis + 1 + int(rng.integers(2))) % 3
    angles[tilt_axis] = rng.uniform(-1, 1) * np.deg2rad(20)
    scale = rng.uniform(0.8, 1.25, size=3)
    points = (surface @ rotation_matrix(angles).T) * scale
    keep_fraction = 1.0
    if rng.random() < 0.5:  # partial view: cut beyond a random plane
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        keep_fraction = float(rng.uniform(0.55, 1.0))
        height = points @ direction
        points = points[height <= np.quantile(height, keep_fraction)]
    count = int(rng.integers(1024, 4097))
    points = points[rng.choice(len(points), min(count, len(points)), replace=False)]
    noise = float(rng.uniform(0, 0.01))
    points = points + rng.normal(0, noise, size=points.shape)
    info = {"angles": [round(float(a), 4) for a in angles], "scale": [round(float(s), 4) for s in scale],
            "kept": round(keep_fraction, 3), "noise": round(noise, 5), "points": len(points)}
    return points.astype(np.float32), info


def instances(meshes: dict[str, np.ndarray], split: str, count: int, seed: int = 0) -> Iterator[dict]:
    """``count`` shard samples per class for ``split`` (seeds disjoint between splits)."""
    names = sorted(meshes)
    for index in range(count):
        for label, name in enumerate(names):
            rng = np.random.default_rng([seed, SPLIT_SEEDS[split], label, index])
            points, info = draw_instance(meshes[name], rng)
            yield {"__key__": f"{split}-{name}-{index:05d}", "npy": encode_npy(points), "cls": str(label),
                   "json": {"label": label, "class": name, "split": split, **info}}


def build_shapes(out: str | Path, *, source: str = "pymeshlab", counts: dict[str, int] | None = None, seed: int = 0,
                 overwrite: bool = False) -> dict[str, dict]:
    """Write the benchmark's splits under ``out``; returns what each split got."""
    out = Path(out)
    counts = counts if counts is not None else {"train": 48, "val": 16, "test": 16}
    meshes = load_meshes(source)
    report = {}
    for split, count in counts.items():
        if count <= 0:
            continue
        result = write_dataset(out / split, "shapes", instances(meshes, split, count, seed), sorted(meshes),
                               max_size="64MB", max_count=max(1, count * len(meshes) // 4), overwrite=overwrite,
                               skipped=[], what="shape instances")
        report[split] = {"samples": result["samples"], "shards": len(result["shards"])}
    (out / "classes.json").write_text(json.dumps(sorted(meshes), indent=1))
    (out / "README.txt").write_text(f"mimx shape benchmark, source={source}, seed={seed}, counts per class={counts}\n"
                                    f"classes: {', '.join(sorted(meshes))}\n{__doc__}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimx.datasets.shapes", description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--source", default="pymeshlab", choices=SOURCES)
    parser.add_argument("--train", type=int, default=48, help="instances per class")
    parser.add_argument("--val", type=int, default=16)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = build_shapes(args.out, source=args.source, seed=args.seed, overwrite=args.overwrite,
                              counts={"train": args.train, "val": args.val, "test": args.test})
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
