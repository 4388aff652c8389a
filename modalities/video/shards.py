"""``mimx video shards SRC OUT``: a video folder (class subfolders give labels) or a file list to tar shards.

Without re-encode options the original bytes are stored under their extension.
``--short-side``, ``--keyint``, ``--crf`` or ``--max-frames`` re-encode with
libx264 (yuv420p, even sizes, same average frame rate). A short ``--keyint``
bounds the decode cost of random access in training. A source that cannot be
decoded or has no frames is skipped and listed at the end.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimx.config import UserError
from mimx.data.shards import add_shard_arguments, list_sources, print_summary, write_dataset
from mimx.modalities.video.io import VIDEO_EXTS, encode_frames, even_size, iter_frames, open_video

SUFFIXES = {f".{ext}" for ext in VIDEO_EXTS}


@dataclass(frozen=True)
class Recode:
    """Re-encode options; all None: store the original bytes."""

    short_side: int | None = None
    keyint: int | None = None
    crf: int | None = None
    max_frames: int | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.short_side, self.keyint, self.crf, self.max_frames))


def prepare_video(path: Path, recode: Recode) -> tuple[str, bytes, dict[str, Any]]:
    """(extension, bytes, meta) of one source; ValueError/OSError when it cannot be used."""
    data = path.read_bytes()
    with open_video(data, "pyav") as video:
        video.frames([0])  # the header alone does not prove the stream decodes
        meta = {"frames": video.num_frames, "fps": video.fps, "height": video.height, "width": video.width}
    if not recode.active:
        ext = path.suffix.lstrip(".").lower()
        return ext, data, meta
    height, width = even_size(meta["height"], meta["width"], recode.short_side)
    frames = iter_frames(data, size=(height, width), max_frames=recode.max_frames)
    encoded, count = encode_frames(frames, meta["fps"] or 25.0, keyint=recode.keyint,
                                   crf=23 if recode.crf is None else recode.crf)
    return "mp4", encoded, {**meta, "frames": count, "height": height, "width": width}


def _prepare(job: tuple[Path, Recode]) -> tuple[str, bytes, dict[str, Any]] | str:
    path, recode = job
    try:
        return prepare_video(path, recode)
    except Exception as exc:  # any unusable source is reported, never fatal
        return f"{type(exc).__name__}: {exc}"[:300]


def video_samples(items: list[tuple[Path, int]], root: Path, recode: Recode, skipped: list[str],
                  workers: int = 0) -> Iterator[dict[str, Any]]:
    jobs = [(path, recode) for path, _ in items]
    if workers > 1:
        pool = ProcessPoolExecutor(workers)
        results: Iterator[Any] = pool.map(_prepare, jobs)
    else:
        pool, results = None, map(_prepare, jobs)
    try:
        for index, ((path, label), result) in enumerate(zip(items, results, strict=True)):
            if isinstance(result, str):
                skipped.append(f"{path}: {result}")
                continue
            ext, data, meta = result
            try:
                source = str(path.relative_to(root))
            except ValueError:
                source = str(path)
            sample: dict[str, Any] = {"__key__": f"{index:08d}", ext: data,
                                      "json": {"label": label, **meta, "source": source}}
            if label >= 0:
                sample["cls"] = str(label)
            yield sample
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def write_video_shards(src: str | Path, out: str | Path, *, prefix: str = "videos", max_size: str | int = "256MB",
                       max_count: int = 100_000, short_side: int | None = None, keyint: int | None = None,
                       crf: int | None = None, max_frames: int | None = None, shuffle: bool = True, seed: int = 0,
                       workers: int = 0, overwrite: bool = False,
                       classes_file: str | Path | None = None) -> dict[str, Any]:
    """Write ``OUT/<prefix>-NNNNNN.tar``; returns ``{"shards", "samples", "classes", "skipped"}``.

    Each sample: ``<key>.<ext>`` video, ``<key>.cls`` label (when labelled) and ``<key>.json``
    ``{"label", "frames", "fps", "height", "width", "source"}``. ``skipped`` lists ``"file: reason"``.
    """
    src, out = Path(src), Path(out)
    for name, value in (("short_side", short_side), ("keyint", keyint), ("max_frames", max_frames)):
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    items, classes, root = list_sources(src, SUFFIXES, "videos", classes_file)
    if shuffle:
        random.Random(seed).shuffle(items)
    skipped: list[str] = []
    recode = Recode(short_side, keyint, crf, max_frames)
    return write_dataset(out, prefix, video_samples(items, root, recode, skipped, workers), classes,
                         max_size=max_size, max_count=max_count, overwrite=overwrite, skipped=skipped,
                         what=f"{len(items)} videos in {src}")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mimx video shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_arguments(parser, "folder of videos or of class subfolders, or a .csv/.txt list 'path label'", "videos")
    parser.add_argument("--short-side", type=int, default=None,
                        help="re-encode with the short side shrunk to this many pixels (never enlarged)")
    parser.add_argument("--keyint", type=int, default=None, help="re-encode with a key frame every K frames")
    parser.add_argument("--crf", type=int, default=None, help="re-encode at this x264 quality (default 23)")
    parser.add_argument("--max-frames", type=int, default=None, help="re-encode keeping the first N frames")
    parser.add_argument("--workers", type=int, default=0, help="processes that read and re-encode (default: 1)")
    args = parser.parse_args(argv)
    summary = write_video_shards(args.src, args.out, prefix=args.prefix, max_size=args.max_size,
                                 max_count=args.max_count, short_side=args.short_side, keyint=args.keyint,
                                 crf=args.crf, max_frames=args.max_frames, shuffle=not args.no_shuffle,
                                 seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                                 classes_file=args.classes)
    print_summary(summary, args.out, "videos")
    return 0
