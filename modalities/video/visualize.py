"""``mimx video visualize``: reconstruction strip (PNG) and animation (GIF or mp4) from a checkpoint and videos."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mimx.data.sources import first_decoded
from mimx.data.transforms import Normalizer
from mimx.masking import build_masking
from mimx.modalities.video.data import VideoDataConfig, VideoDecoder
from mimx.modalities.video.export import load_video_mae
from mimx.modalities.video.figures import save_animation, save_strip, video_panels
from mimx.modalities.video.io import VIDEO_EXTS
from mimx.modalities.video.model import VIDEO_MASKINGS


def load_clips(sources: list[str], decoder: VideoDecoder, count: int) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` centre clips (uint8 ``[N, C, T, H, W]``) and their names, in the order given.

    A source is a video file, a folder of videos, or shards (a ``.tar``, a brace
    pattern, a folder of ``.tar`` files, a ``pipe:`` URL). An unreadable video is
    reported and skipped.
    """
    suffixes = {f".{ext}" for ext in VIDEO_EXTS}
    items, names = first_decoded(sources, lambda s, rng: decoder(s, rng)["video"][0], count, suffixes, "video")
    return torch.stack(items), names


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
        model.masking = build_masking(**{**c.masking, "ratio": mask_ratio}, kinds=VIDEO_MASKINGS)
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
    parser.add_argument("--out", default="video_reconstruction.png",
                        help="output PNG (default video_reconstruction.png)")
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
