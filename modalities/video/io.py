"""Video readers (decord, torchcodec or PyAV) over in-memory bytes or files, and an H.264 clip encoder.

Frames are addressed by their index in presentation order, never by time: a
variable-frame-rate video is read as its sequence of frames, and ``fps`` is the
container's average rate. The backends return identical RGB frames for the
same indices (tested on real clips).

``decord`` and ``torchcodec`` seek to the key frame before each requested
frame, so random access costs at most one GOP per clip (re-encode with
``--keyint`` to bound it); ``pyav`` decodes sequentially from the first frame
up to the last requested one. torchcodec (PyTorch's decoder) needs FFmpeg's
shared libraries (4 to 8) on the system. "auto" takes the fastest that loads
(torchcodec, then decord, then PyAV; measured in docs/benchmarks.md) and reads
a video it cannot decode with PyAV.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from mimx.config import UserError

VIDEO_EXTS = ("mp4", "webm", "avi", "mkv", "mov")
BACKENDS = ("auto", "decord", "pyav", "torchcodec")

Source = bytes | bytearray | memoryview | str | os.PathLike


class Video(Protocol):
    """An opened video: metadata and random access to RGB frames by index."""

    num_frames: int
    fps: float

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``[len(indices), H, W, 3]`` RGB; indices may repeat and come in any order."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Video: ...

    def __exit__(self, *exc: object) -> None: ...


def _first_line(exc: BaseException) -> str:
    """The message's first line without decord's ``[time] source.cc:line:`` or torchcodec's ``Class, file.cpp:line,``
    prefix."""
    lines = str(exc).strip().splitlines()
    line = re.sub(r"^\[[\d:]+\] \S+: ", "", lines[0] if lines else type(exc).__name__)
    return re.sub(r"^\w+, \S+\.cpp:\d+, ", "", line)[:200]


def _check_indices(indices: Sequence[int], num_frames: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("no frame indices requested")
    if idx.min() < 0 or idx.max() >= num_frames:
        raise IndexError(f"frame indices {int(idx.min())}..{int(idx.max())} outside a video of {num_frames} frames")
    return idx


class _Reader(abc.ABC):
    """Shared context-manager behaviour and index bookkeeping; backends implement ``_read_sorted``."""

    num_frames: int

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = _check_indices(indices, self.num_frames)
        unique, inverse = np.unique(idx, return_inverse=True)
        return self._read_sorted(unique.tolist())[inverse]

    @abc.abstractmethod
    def _read_sorted(self, indices: list[int]) -> np.ndarray:
        """uint8 ``[len(indices), H, W, 3]`` for sorted, distinct indices."""

    def _pyav_instead(self, reason: str, indices: list[int]) -> np.ndarray:
        """The frames read by PyAV where this reader was opened with ``fallback``; else ValueError(reason)."""
        if not getattr(self, "_fallback", False):
            raise ValueError(reason) from None
        return _with_fallback(reason, lambda: PyAVVideo(self._source, self._threads)._read_sorted(indices))

    def close(self) -> None:  # noqa: B027 (backends with nothing to release keep this)
        pass

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DecordVideo(_Reader):
    """decord ``VideoReader`` (seek to the previous key frame, decode forward)."""

    def __init__(self, source: Source, threads: int = 1, fallback: bool = False) -> None:
        import decord

        self._source, self._threads, self._fallback = source, threads, fallback
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            # decord logs the "file name" of an in-memory source up to its first NUL byte: every video
            # container has one in its header, so refuse text (an HTML error page saved as .mp4) up front
            if b"\x00" not in data[:4096]:
                raise ValueError(f"not a video: {len(data)} bytes with no binary container header")
            uri: Any = io.BytesIO(data)
        else:
            uri = os.fspath(source)
        try:
            self._reader = decord.VideoReader(uri, num_threads=threads)
        except AssertionError as exc:  # decord asserts a positive frame count
            raise ValueError("video has no frames") from exc
        except Exception as exc:  # RuntimeError / DECORDError on unreadable input
            raise ValueError(f"cannot open video (decord): {_first_line(exc)}") from None
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())
        self._shape: tuple[int, int] | None = None

    def _size(self) -> tuple[int, int]:
        if self._shape is None:  # decord does not expose the frame size without decoding one
            self._shape = tuple(self.frames([0]).shape[1:3])
        return self._shape

    @property
    def height(self) -> int:
        return self._size()[0]

    @property
    def width(self) -> int:
        return self._size()[1]

    def _read_sorted(self, indices: list[int]) -> np.ndarray:
        try:
            out = self._reader.get_batch(indices).asnumpy()
        except Exception as exc:
            reason = f"cannot decode frames (decord): {_first_line(exc)}"
            out = self._pyav_instead(reason, indices)  # decord 0.6 fails on some narrow widths (<= 72 px)
        self._shape = tuple(out.shape[1:3])
        return out

    def close(self) -> None:
        self._reader = None


class TorchCodecVideo(_Reader):
    """torchcodec ``VideoDecoder`` in exact seek mode: frame indices come from a scan of the whole stream."""

    def __init__(self, source: Source, threads: int = 1, fallback: bool = False) -> None:
        decoder_class = _torchcodec_decoder()
        self._source, self._threads, self._fallback = source, threads, fallback
        src = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
        try:
            self._decoder = decoder_class(src, dimension_order="NHWC", num_ffmpeg_threads=threads,
                                          seek_mode="exact")
            meta = self._decoder.metadata
        except Exception as exc:  # RuntimeError / ValueError from FFmpeg on unreadable input
            raise ValueError(f"cannot open video (torchcodec): {_first_line(exc)}") from None
        self.num_frames = int(meta.num_frames or 0)
        if self.num_frames <= 0:
            raise ValueError("video has no frames")
        self.fps = float(meta.average_fps or 0.0)
        self.height, self.width = int(meta.height), int(meta.width)

    def _read_sorted(self, indices: list[int]) -> np.ndarray:
        try:
            return self._decoder.get_frames_at(indices).data.numpy()
        except Exception as exc:
            reason = f"cannot decode frames (torchcodec): {_first_line(exc)}"
        return self._pyav_instead(reason, indices)

    def close(self) -> None:
        self._decoder = None


def _torchcodec_decoder() -> Any:
    """torchcodec's ``VideoDecoder`` class, or a UserError saying what is missing (the package or FFmpeg)."""
    try:
        from torchcodec._core import ops
        from torchcodec.decoders import VideoDecoder
    except (ImportError, RuntimeError) as exc:
        raise UserError("data.backend=torchcodec needs the torchcodec package (pip install torchcodec, the "
                        "release that matches your torch) and FFmpeg's shared libraries 4 to 8 (Debian, Ubuntu: "
                        f"apt-get install ffmpeg): {_first_line(exc)}") from None
    if getattr(ops, "_FFMPEG_AVAILABLE", True) is False:  # torchcodec imports without FFmpeg, then fails per video
        raise UserError("torchcodec is installed but cannot load FFmpeg's shared libraries (4 to 8; Debian, "
                        "Ubuntu: apt-get install ffmpeg)")
    return VideoDecoder


class PyAVVideo(_Reader):
    """PyAV reader: sequential decode from the start, so reading frame ``i`` costs ``i + 1`` decodes."""

    def __init__(self, source: Source, threads: int = 1) -> None:
        self._source = source
        self._threads = threads
        try:
            container = self._open()
        except Exception as exc:
            raise ValueError(f"cannot open video (pyav): {_first_line(exc)}") from None
        try:
            if not container.streams.video:
                raise ValueError("no video stream in the file")
            stream = container.streams.video[0]
            self.height = int(stream.codec_context.height)
            self.width = int(stream.codec_context.width)
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            count = int(stream.frames or 0)
            if count <= 0:  # e.g. webm / mkv: no frame count in the header, count the packets
                count = sum(1 for p in container.demux(stream) if p.size)
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"cannot read video (pyav): {_first_line(exc)}") from None
        finally:
            container.close()
        if count <= 0:
            raise ValueError("video has no frames")
        self.num_frames = count

    def _open(self) -> Any:
        import av

        src = self._source
        if isinstance(src, (bytes, bytearray, memoryview)):
            return av.open(io.BytesIO(src), mode="r")
        return av.open(os.fspath(src), mode="r")

    def _read_sorted(self, indices: list[int]) -> np.ndarray:
        wanted = iter(indices)
        target = next(wanted)
        found: list[np.ndarray] = []
        decoded = 0
        try:
            with self._open() as container:
                stream = container.streams.video[0]
                if self._threads > 1:
                    stream.thread_type = "AUTO"
                stream.codec_context.thread_count = self._threads
                for frame in container.decode(stream):
                    if decoded == target:
                        found.append(frame.to_ndarray(format="rgb24"))
                        target = next(wanted, None)
                        if target is None:
                            break
                    decoded += 1
        except Exception as exc:
            raise ValueError(f"cannot decode frame {decoded} (pyav): {_first_line(exc)}") from None
        if target is not None:
            raise ValueError(f"video ended after {decoded} decoded frames; frame {target} was asked for "
                             f"({self.num_frames} in the header): truncated or corrupt")
        return np.stack(found)


def _with_fallback(reason: str, read: Any) -> Any:
    try:
        return read()
    except ImportError:
        raise ValueError(reason) from None
    except ValueError as exc:
        raise ValueError(f"{reason}; {exc}") from None


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def torchcodec_available() -> bool:
    """Whether torchcodec imports and has loaded FFmpeg's libraries."""
    try:
        _torchcodec_decoder()
    except UserError:
        return False
    return True


def auto_backend() -> str:
    """What ``backend="auto"`` reads with first: torchcodec, else decord, else PyAV."""
    return "torchcodec" if torchcodec_available() else "decord" if decord_available() else "pyav"


def _check_known(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}")


def check_backend(backend: str) -> None:
    """Raise UserError now, in the main process, if ``backend`` is unknown or cannot load."""
    _check_known(backend)
    if backend == "torchcodec":
        _torchcodec_decoder()
    elif backend == "decord" and not decord_available():
        raise UserError("data.backend=decord needs the decord package (pip install 'mimx[video]'; x86_64 only)")
    elif backend == "pyav" and importlib.util.find_spec("av") is None:
        raise UserError("data.backend=pyav needs the av package (pip install 'mimx[video]')")


def open_video(source: Source, backend: str = "auto", threads: int = 1) -> Video:
    """Open a video from bytes or a path with ``backend`` ("decord", "pyav", "torchcodec", or "auto").

    "auto" uses :func:`auto_backend` and falls back to PyAV for a video it cannot read; a named
    backend has no fallback (a missing package or FFmpeg library is a UserError).
    Raises ValueError with a short reason for unreadable, empty or corrupt input.
    ``threads`` is the decoder thread count (decord defaults to 1: more may hang in worker processes).
    """
    _check_known(backend)
    if isinstance(source, (bytes, bytearray, memoryview)) and len(source) == 0:
        raise ValueError("video has no frames (0 bytes)")
    primary = auto_backend() if backend == "auto" else backend
    if primary == "pyav":
        return PyAVVideo(source, threads)
    fallback = backend == "auto"
    reader = TorchCodecVideo if primary == "torchcodec" else DecordVideo
    try:
        return reader(source, threads, fallback=fallback)
    except ValueError as exc:
        if not fallback:
            raise
        return _with_fallback(str(exc), lambda: PyAVVideo(source, threads))


def _rate(fps: float | Fraction) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"frame rate must be positive, got {fps}")
    return rate


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """A uint8 RGB ``[H, W, 3]`` frame (even H, W) as planar yuv420p ``[H * 3 / 2, W]``: BT.601, limited range.

    Done here rather than by PyAV's swscale: with it, 60 moving-digit clips encoded to different bytes in
    each of three processes; with this, the yuv planes are the same every time. libx264 itself still varies
    now and then (0 to 2 clips in 12 of that kind per run), so encodes are close, not byte-exact.
    """
    x = frame.astype(np.float32) * np.float32(1 / 255)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    h, w = y.shape

    def half(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean((1, 3))

    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8).ravel() for p in (y, half(u), half(v))]
    return np.concatenate(planes).reshape(h * 3 // 2, w)  # PyAV reads the planes back to back


def encode_frames(frames: Iterable[np.ndarray], fps: float | Fraction, *, codec: str = "libx264",
                  keyint: int | None = None, crf: int | None = 23, preset: str = "medium",
                  threads: int = 1, container: str = "mp4") -> tuple[bytes, int]:
    """Encode RGB uint8 ``[H, W, 3]`` frames (even H and W) as ``container`` (mp4, matroska, ...) bytes.

    Returns (bytes, frame count).
    ``keyint`` fixes the GOP (a key frame every ``keyint`` frames, no scene cuts), which bounds
    the cost of random access when decoding; ``crf`` is the constant-quality level (x264: 0-51).
    """
    import av

    buf = io.BytesIO()
    count = 0
    options: dict[str, str] = {}
    if codec in ("libx264", "libx265"):
        options["preset"] = preset
        if crf is not None:
            options["crf"] = str(crf)
        if keyint:
            options[f"{codec[3:]}-params"] = f"keyint={keyint}:min-keyint={keyint}:scenecut=0"
    with av.open(buf, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=_rate(fps), options=options)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = threads
        if keyint:
            stream.codec_context.gop_size = keyint
        for frame in frames:
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
            if count == 0:
                height, width = frame.shape[:2]
                if height % 2 or width % 2:
                    raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
                stream.width, stream.height = width, height
            elif frame.shape[:2] != (height, width):
                raise ValueError(f"frame {count} is {frame.shape[1]}x{frame.shape[0]}, the first was {width}x{height}")
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")):
                output.mux(packet)
            count += 1
        if count == 0:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            output.mux(packet)
    return buf.getvalue(), count


def encode_clip(frames: np.ndarray, fps: float | Fraction, *, codec: str = "libx264", keyint: int | None = None,
                crf: int | None = 23, preset: str = "medium", container: str = "mp4") -> bytes:
    """mp4 (or ``container``) bytes of a uint8 ``[T, H, W, 3]`` RGB clip (H and W even)."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"a clip is uint8 [T, H, W, 3], got shape {list(frames.shape)}")
    return encode_frames(iter(frames), fps, codec=codec, keyint=keyint, crf=crf, preset=preset,
                         container=container)[0]


def even_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) with the short side shrunk to ``short_side`` (never enlarged), both rounded to even numbers."""
    scale = 1.0
    if short_side is not None and min(height, width) > short_side:
        scale = short_side / min(height, width)
    return max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2))


def iter_frames(source: Source, *, size: tuple[int, int] | None = None, start: int = 0,
                max_frames: int | None = None, threads: int = 0) -> Iterator[np.ndarray]:
    """RGB frames of a video in order with PyAV (resized to ``size`` = (h, w) by swscale's area filter)."""
    import av

    src = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    with av.open(src, mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        kept = 0
        for index, frame in enumerate(container.decode(stream)):
            if index < start:
                continue
            if max_frames is not None and kept >= max_frames:
                break
            if size is None:
                yield frame.to_ndarray(format="rgb24")
            else:
                yield frame.reformat(width=size[1], height=size[0], format="rgb24",
                                     interpolation="AREA").to_ndarray()
            kept += 1
