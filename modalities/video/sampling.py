"""Which frames make a clip: segment (TSN) and dense (fixed stride) sampling, multi-view test starts.

All functions return frame indices (int64) and draw randomness only from the
given ``np.random.Generator``. Indices count frames, not seconds.
"""

from __future__ import annotations

import numpy as np

SAMPLINGS = ("segment", "dense")
SHORT_MODES = ("loop", "clamp", "skip")


def segment_indices(num_frames: int, clip_len: int, rng: np.random.Generator | None = None,
                    train: bool = True, offset: float = 0.5) -> np.ndarray:
    """One frame from each of ``clip_len`` equal segments of the video (TSN, as VideoMAE on SSv2).

    Train: a uniform random position in each segment; eval: the position ``offset`` (0.5 = the
    middle) of each segment. Videos shorter than ``clip_len`` repeat frames.
    """
    _check(num_frames, clip_len)
    bounds = np.arange(clip_len + 1) * (num_frames / clip_len)
    pos = rng.random(clip_len) if train else np.full(clip_len, offset)
    index = np.floor(bounds[:-1] + pos * (bounds[1:] - bounds[:-1])).astype(np.int64)
    return np.clip(index, 0, num_frames - 1)


def dense_span(clip_len: int, rate: int) -> int:
    """Frames covered by ``clip_len`` frames taken every ``rate`` frames."""
    return (clip_len - 1) * rate + 1


def dense_from(num_frames: int, start: int, clip_len: int, rate: int, short: str = "loop") -> np.ndarray:
    """``clip_len`` frames every ``rate`` frames from ``start``; past the end: ``short`` decides."""
    index = start + np.arange(clip_len, dtype=np.int64) * rate
    if index[-1] < num_frames:
        return index
    if short == "loop":
        return index % num_frames
    if short == "clamp":
        return np.minimum(index, num_frames - 1)
    if short == "skip":
        raise ValueError(f"video has {num_frames} frames but a clip spans {dense_span(clip_len, rate)} "
                         f"({clip_len} frames every {rate}); set data.short_video=loop or clamp to use it")
    raise ValueError(f"data.short_video must be one of {', '.join(SHORT_MODES)}, got {short!r}")


def dense_indices(num_frames: int, clip_len: int, rate: int, rng: np.random.Generator | None = None,
                  train: bool = True, short: str = "loop") -> np.ndarray:
    """``clip_len`` frames every ``rate`` frames, from a random (train) or centred (eval) start.

    A video shorter than the span ``(clip_len - 1) * rate + 1`` is looped (from a random start when
    training, else from 0), clamped (the last frame repeats) or refused (``short="skip"``).
    """
    _check(num_frames, clip_len)
    span = dense_span(clip_len, rate)
    if num_frames >= span:
        start = int(rng.integers(0, num_frames - span + 1)) if train else (num_frames - span) // 2
    else:
        start = int(rng.integers(0, num_frames)) if train and short == "loop" else 0
    return dense_from(num_frames, start, clip_len, rate, short)


def view_starts(num_frames: int, span: int, views: int) -> np.ndarray:
    """Start frames of ``views`` clips of ``span`` frames spread evenly over the video (1 view: centred)."""
    slack = max(num_frames - span, 0)
    if views == 1:
        return np.array([slack // 2], dtype=np.int64)
    return np.floor(np.arange(views) * (slack / (views - 1))).astype(np.int64)


def sample_clips(num_frames: int, clip_len: int, *, sampling: str = "dense", rate: int = 4, short: str = "loop",
                 count: int = 1, rng: np.random.Generator | None = None, train: bool = True) -> np.ndarray:
    """``[count, clip_len]`` frame indices of ``count`` clips from one video.

    Train: ``count`` independent random clips (VideoMAE v2 repeated sampling). Eval: ``count``
    temporal views, evenly spread (dense: starts from :func:`view_starts`; segment: the positions
    ``(k + 0.5) / count`` inside each segment).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"data.sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    if count < 1:
        raise ValueError(f"clip count must be at least 1, got {count}")
    if train and rng is None:
        raise ValueError("training clips need a random generator")
    if sampling == "segment":
        if train:
            return np.stack([segment_indices(num_frames, clip_len, rng) for _ in range(count)])
        return np.stack([segment_indices(num_frames, clip_len, train=False, offset=(k + 0.5) / count)
                         for k in range(count)])
    if train:
        return np.stack([dense_indices(num_frames, clip_len, rate, rng, short=short) for _ in range(count)])
    _check(num_frames, clip_len)
    starts = view_starts(num_frames, dense_span(clip_len, rate), count)
    return np.stack([dense_from(num_frames, int(s), clip_len, rate, short) for s in starts])


def _check(num_frames: int, clip_len: int) -> None:
    if num_frames <= 0:
        raise ValueError("video has no frames")
    if clip_len <= 0:
        raise ValueError(f"clip length must be positive, got {clip_len}")
