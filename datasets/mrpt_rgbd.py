"""The Kinect frame that Debian's ``mrpt-common`` ships, read without MRPT.

``/usr/share/mrpt/datasets/tests_rgbd.rawlog`` (``apt-get install mrpt-common``) is a gzip-compressed MRPT
archive holding one ``mrpt::obs::CObservation3DRangeScan`` (serialization version 9, sensor label
``OPENNI2``): a 640x480 colour image and a 640x480 depth image registered to it by the driver
(OpenNI2; the stored depth-to-colour pose has no translation, and depth edges fall within a few pixels of
the colour edges), depth in millimetres with 0 where the sensor
saw nothing, plus the same points as a 3-D cloud.

MRPT archives write an object as one byte ``0x80 | len(class name)``, the class name, a version byte, the
fields, and an end byte ``0x88``. This reader walks exactly the layout of that file's version and checks
every marker, flag and size on the way, so any other layout stops with a message naming the offset,
never with wrong pixels.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimx.config import UserError

RAWLOG = Path("/usr/share/mrpt/datasets/tests_rgbd.rawlog")
_END = 0x88


@dataclass
class RGBDFrame:
    rgb: np.ndarray  # uint8 [H, W, 3]
    depth_mm: np.ndarray  # uint16 [H, W], 0 = no reading
    points: np.ndarray  # float32 [N, 3], metres, sensor frame
    max_range_m: float
    sensor: str


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> UserError:
        return UserError(f"{self.path}: unexpected MRPT layout at byte {self.pos}: {what}; this reader knows "
                         "the CObservation3DRangeScan v9 frame of Debian's mrpt-common")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"{n} more bytes needed, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def array(self, dtype: str, count: int) -> np.ndarray:
        return np.frombuffer(self.take(np.dtype(dtype).itemsize * count), dtype=dtype).copy()

    def flag(self) -> bool:
        value = self.take(1)[0]
        if value not in (0, 1):
            raise self.fail(f"a bool flag, found {value}")
        return bool(value)

    def begin(self, name: str, version: int) -> None:
        head = self.take(1)[0]
        found = self.take(head & 0x7F).decode("latin-1")
        if head & 0x80 == 0 or found != name:
            raise self.fail(f"object {name!r}, found {found!r}")
        got = self.take(1)[0]
        if got != version:
            raise self.fail(f"{name} version {version}, found {got}")

    def end(self, name: str) -> None:
        if self.take(1)[0] != _END:
            raise self.fail(f"the end marker of {name}")

    def skip_object(self, name: str, version: int, size: int) -> None:
        self.begin(name, version)
        self.take(size)
        self.end(name)


def read_rgbd_rawlog(path: str | Path = RAWLOG) -> RGBDFrame:
    """The colour image, registered depth and point cloud of mrpt-common's Kinect frame."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} is missing: apt-get install mrpt-common")
    r = _Reader(gzip.decompress(path.read_bytes()), path)
    r.begin("mrpt::obs::CObservation3DRangeScan", 9)
    (max_range,) = r.unpack("f")
    r.skip_object("mrpt::poses::CPose3D", 3, 12 * 8)  # sensor pose: translation + 3x3 rotation
    if not r.flag():
        raise r.fail("a point cloud")
    (n,) = r.unpack("I")
    points = np.stack([r.array("<f4", n) for _ in range(3)], axis=1)  # x forward (depth), y left, z up
    cols_of, rows_of = r.array("<u2", n), r.array("<u2", n)  # each point's pixel
    if not r.flag():
        raise r.fail("a range image")
    units, rows, cols = r.unpack("fII")
    if abs(units - 0.001) > 1e-7:
        raise r.fail(f"range units of 1 mm, found {units}")
    depth = r.array("<u2", rows * cols).reshape(rows, cols)
    # the cloud was made from this depth image: one point per valid pixel, its x the pixel's depth
    if (n != np.count_nonzero(depth) or cols_of.max() >= cols or rows_of.max() >= rows
            or np.abs(depth[rows_of, cols_of] - points[:, 0] * 1000).max() > 1):
        raise r.fail("a depth image that matches the point cloud")
    if not r.flag():
        raise r.fail("a colour image")
    r.begin("mrpt::img::CImage", 9)
    external, color = r.flag(), r.flag()
    width, height = (abs(v) for v in r.unpack("ii"))  # stored negated for raw (uncompressed) pixels
    if external or not color or (height, width) != (rows, cols):
        raise r.fail(f"an embedded colour image of {cols}x{rows}, found {width}x{height} (external={external})")
    bgr = r.array("u1", rows * cols * 3).reshape(rows, cols, 3)  # OpenCV's channel order
    r.end("mrpt::img::CImage")
    if r.flag():
        raise r.fail("no confidence image")
    for _ in range(2):  # depth and colour camera intrinsics
        r.begin("mrpt::img::TCamera", 4)
        r.take(13 * 8)  # focal length in metres, 8 distortion terms, fx, fy, cx, cy
        if r.unpack("II") != (rows, cols):
            raise r.fail("camera parameters for the same image size")
        r.end("mrpt::img::TCamera")
    r.skip_object("mrpt::poses::CPose3D", 3, 12 * 8)  # colour camera relative to depth camera
    r.unpack("fQ")  # range standard error, timestamp
    (length,) = r.unpack("I")
    sensor = r.take(length).decode("latin-1")
    r.take(13)  # version-9 fields after the label (range-is-depth and the like)
    r.end("mrpt::obs::CObservation3DRangeScan")
    if r.pos != len(r.data):
        raise r.fail(f"one observation, found {len(r.data) - r.pos} more bytes")
    return RGBDFrame(rgb=np.ascontiguousarray(bgr[..., ::-1]), depth_mm=depth, points=points,
                     max_range_m=float(max_range), sensor=sensor)
