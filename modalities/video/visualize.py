"""``mimx video visualize``: reconstruction strip (PNG) and animation (GIF or mp4) from a checkpoint and videos."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from webdataset.tariterators import tarfile_samples

from mimx.config import UserError
from mimx.data.shards import expand_shards, is_remote
from mimx.data.transforms import Normalizer
from mimx.masking import build_masking
from mimx.modalities.video.data import VideoDataConfig, VideoDecoder
from mimx.modalities.video.export import load_video_mae
from mimx.modalities.video.figures import save_animation, save_strip, video_panels
from mimx.modalities.video.io import VIDEO_EXTS


def _video_files(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(f for f in source.rglob("*") if f.suffix.lower().lstrip(".") in VIDEO_EXTS)
    return [source]


def load_clips(sources: list[str], decoder: VideoDecoder, count: int) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` centre clips (uint8 ``[N, C, T, H, W]``) and their names, in the order given.

    A source is a video file, a folder of videos, or shards (a ``.tar``, a brace
    pattern, a folder of ``.tar`` files, a ``pipe:`` URL). An unreadable video is
    reported and skipped.
    """
    clips: list[torch.Tensor] = []
    names: list[str] = []
    rng = np.random.default_rng(0)

    def add(sample: dict, name: str) -> None:
        try:
            clips.append(decoder(sample, rng)["video"][0])
            names.append(name)
        except Exception as exc:
            print(f"skipped {name}: {type(exc).__name__}: {exc}")

    for source in sources:
        path = Path(source)
        if is_remote(source) or source.endswith(".tar") or "{" in source or (path.is_dir() and any(path.glob("*.tar"))):
            for url in expand_shards(source):
                for sample in tarfile_samples([{"url": url}], handler=lambda exc: True):
                    add(sample, f"{url}:{sample['__key__']}")
                    if len(clips) >= count:
                        break
                if len(clips) >= count:
                    break
        else:
            if not path.exists():
                raise UserError(f"{source} does not exist; give video files, a folder of videos or shards")
            for f in _video_files(path):
                add({"__key__": f.stem, f.suffix.lower().lstrip("."): f.read_bytes()}, str(f))
                if len(clips) >= count:
                    break
        if len(clips) >= count:
            break
    if not clips:
        raise UserError(f"no readable video in {', '.join(sources)}")
    return torch.stack(clips), names


def visualize(checkpoint: str | Path, sources: list[str], out: str | Path, *, count: int = 4, seed: int = 0,
              mask_ratio: float | None = None, rate: int | None = None, animation: str | None = "gif",
              fps: float = 4.0) -> list[Path]:
    """Write ``out`` (PNG strip) and, unless ``animation`` is None, ``out`` with a ``.gif``/``.mp4`` suffix.

    The mask comes from a generator seeded with ``seed``: the same seed gives the
    same figure. ``mask_ratio`` overrides the trained ratio; ``rate`` the frame
    stride (default: the model's clip covers the video's centre, stride 4).
    """
    model = load_video_mae(checkpoint)
    c = model.config
    if mask_ratio is not None:
        model.masking = build_masking(**{**c.masking, "ratio": mask_ratio})
    data = VideoDataConfig(image_size=list(c.image_hw), clip_len=c.num_frames, rate=rate or 4, test_clips=1,
                           test_crops=1, **model.normalization)
    clips, _ = load_clips(sources, VideoDecoder(data, train=False), count)
    x = Normalizer(data.mean, data.std)(clips)
    with torch.no_grad():
        mask = model.make_mask(x, generator=torch.Generator().manual_seed(seed))
        panels = video_panels(model, x, mask)
    out = Path(out)
    written = [save_strip(panels, out)]
    if animation:
        written.append(save_animation(panels, out.with_suffix(f".{animation}"), fps=fps))
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mimx video visualize",
        description="Reconstruction of video clips: a PNG strip (rows: original / masked / reconstruction / "
                    "reconstruction with the visible tubelets; one column per frame) and an animation. Norm-pix "
                    "predictions are mapped back with each original tubelet's statistics.")
    parser.add_argument("checkpoint", help="run folder, checkpoints/last.pt or model.safetensors")
    parser.add_argument("sources", nargs="+", help="video files, folders of videos, or shards")
    parser.add_argument("--out", default="reconstruction.png", help="output PNG (default reconstruction.png)")
    parser.add_argument("--num", type=int, default=4, help="clips to show (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="mask seed: the same seed gives the same figure")
    parser.add_argument("--mask-ratio", type=float, default=None, help="override the trained mask ratio")
    parser.add_argument("--rate", type=int, default=None, help="frame stride of the clip (default 4)")
    parser.add_argument("--animation", choices=["gif", "mp4", "none"], default="gif",
                        help="also write an animation beside the PNG (default gif)")
    parser.add_argument("--fps", type=float, default=4.0, help="animation frame rate")
    args = parser.parse_args(argv)
    paths = visualize(args.checkpoint, args.sources, args.out, count=args.num, seed=args.seed,
                      mask_ratio=args.mask_ratio, rate=args.rate,
                      animation=None if args.animation == "none" else args.animation, fps=args.fps)
    for path in paths:
        print(f"wrote {path}")
    return 0
