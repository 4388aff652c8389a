"""Numpy parsers for point-cloud and mesh files, from their bytes: PLY, PCD, OBJ, STL and OFF.

They run anywhere numpy does, including forked DataLoader workers (where open3d's reader was seen to
hang during a pretraining run), need no temporary file for a shard member, and check a file
against its header: a truncated file raises ``ValueError`` saying what is missing instead of
returning whatever the buffer held. Meshes come back as vertices ``[V, 3]`` float64 and triangles
``[F, 3]`` int64 (polygons fan-triangulated); clouds as ``[N, 3]`` float32.
"""

from __future__ import annotations

import re
import struct

import numpy as np

PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
FACE_LISTS = ("vertex_indices", "vertex_index")


def fan_triangles(polygons: list | np.ndarray) -> np.ndarray:
    """``[F, 3]`` triangles of polygons given as vertex-id lists (a fan from each polygon's first vertex).

    An ``[P, n]`` array (every polygon with n corners, as most meshes store them) is split without a loop.
    """
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        ids = polygons.astype(np.int64)
        if ids.shape[1] < 3:
            return np.zeros((0, 3), dtype=np.int64)
        fans = [np.stack([ids[:, 0], ids[:, i], ids[:, i + 1]], axis=1) for i in range(1, ids.shape[1] - 1)]
        return np.stack(fans, axis=1).reshape(-1, 3)
    triangles = [(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)]
    return np.asarray(triangles, dtype=np.int64).reshape(-1, 3)


def _check_ids(triangles: np.ndarray, num_vertices: int) -> np.ndarray:
    if len(triangles):
        low, high = int(triangles.min()), int(triangles.max())
        if low < 0 or high >= num_vertices:
            bad = low if low < 0 else high
            raise ValueError(f"a face refers to vertex {bad}; the file has {num_vertices} vertices")
    return triangles


def _table(rows: list[str], usecols: tuple[int, ...] | None = None) -> np.ndarray | None:
    """Text rows as one ``[R, C]`` float64 table (numpy's C parser), or None when they are ragged or not all
    numbers: the callers then read record by record, which is slower but names the bad record."""
    if not rows:
        return None
    try:
        return np.loadtxt(rows, dtype=np.float64, comments=None, ndmin=2, usecols=usecols)
    except ValueError:
        return None


def _uniform_lists(table: np.ndarray, column: int) -> int | None:
    """The length every record's list has when ``column`` of ``table`` holds list lengths, else None."""
    counts = table[:, column]
    n = counts[0]
    if not np.isfinite(n) or n < 0 or n != int(n) or not np.all(counts == n) or column + 1 + int(n) > table.shape[1]:
        return None
    return int(n)


# ---------------------------------------------------------------- PLY

class _PlyElement:
    def __init__(self, name: str, count: int) -> None:
        self.name, self.count = name, count
        self.props: list[tuple[str, str, str | None]] = []  # (name, value dtype, list-count dtype or None)


def _ply_header(data: bytes) -> tuple[str, list[_PlyElement], int]:
    end = re.search(rb"(?m)^end_header[ \t]*(\r?\n|$)", data)
    if not data.startswith(b"ply") or end is None:
        raise ValueError("not a PLY file (no 'ply' ... 'end_header' header)")
    fmt, elements = "", []
    for raw in data[:end.start()].decode("ascii", errors="replace").splitlines()[1:]:
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3:
            elements.append(_PlyElement(words[1], int(words[2])))
        elif words[0] == "property" and elements:
            try:
                if words[1] == "list":
                    elements[-1].props.append((words[4], PLY_TYPES[words[3]], PLY_TYPES[words[2]]))
                else:
                    elements[-1].props.append((words[2], PLY_TYPES[words[1]], None))
            except (IndexError, KeyError) as exc:
                raise ValueError(f"unreadable PLY header line {raw!r}") from exc
        else:
            raise ValueError(f"unreadable PLY header line {raw!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"unknown PLY format {fmt!r}")
    return fmt, elements, end.end()


def _ply_binary(element: _PlyElement, data: bytes, at: int, order: str) -> tuple[dict, int]:
    """The columns of one binary element starting at byte ``at``, and where the next one starts."""
    fixed = [(name, order + kind) for name, kind, count in element.props if count is None]
    if len(fixed) == len(element.props):  # no list property: one structured read
        dtype = np.dtype(fixed)
        need = dtype.itemsize * element.count
        if len(data) - at < need:
            have = (len(data) - at) // max(dtype.itemsize, 1)
            raise ValueError(f"the header announces {element.count} {element.name} records, "
                             f"the file is truncated after {have}")
        rows = np.frombuffer(data, dtype=dtype, count=element.count, offset=at)
        return {name: rows[name] for name, _ in fixed}, at + need
    lists = [i for i, (_, _, count) in enumerate(element.props) if count is not None]
    if len(lists) == 1:  # one list (faces): try reading it as if every record had the first one's length
        uniform = _ply_uniform(element, data, at, order, lists[0])
        if uniform is not None:
            return uniform
    columns: dict = {name: [] for name, _, _ in element.props}
    def take(kind: str, count: int, index: int) -> np.ndarray:
        if count < 0:
            raise ValueError(f"{element.name} record {index} has a list of length {count}")
        if len(data) - at < count * np.dtype(kind).itemsize:
            raise ValueError(f"the header announces {element.count} {element.name} records, "
                             f"the file is truncated after {index}")
        return np.frombuffer(data, order + kind, count, at)

    for index in range(element.count):
        for name, kind, count_kind in element.props:
            if count_kind is None:
                value = take(kind, 1, index)[0]
                at += np.dtype(kind).itemsize
            else:
                n = int(take(count_kind, 1, index)[0])
                at += np.dtype(count_kind).itemsize
                value = take(kind, n, index)
                at += n * np.dtype(kind).itemsize
            columns[name].append(value)
    return columns, at


def _ply_uniform(element: _PlyElement, data: bytes, at: int, order: str, where: int) -> tuple[dict, int] | None:
    """The element read in one go when its list property has the same length in every record, else None."""
    head = np.dtype([(name, order + kind) for name, kind, _ in element.props[:where]])
    name, kind, count_kind = element.props[where]
    if len(data) - at < head.itemsize + np.dtype(count_kind).itemsize:
        return None
    n = int(np.frombuffer(data, order + count_kind, 1, at + head.itemsize)[0])
    if n < 0:
        return None
    fields = [(p, order + k) for p, k, _ in element.props[:where]] + [("\x00count", order + count_kind)]
    fields += [(name, order + kind, (n,))] + [(p, order + k) for p, k, _ in element.props[where + 1:]]
    dtype = np.dtype(fields)
    if len(data) - at < dtype.itemsize * element.count:
        return None
    rows = np.frombuffer(data, dtype=dtype, count=element.count, offset=at)
    if not np.all(rows["\x00count"] == n):
        return None
    return {p: rows[p] for p, _, _ in element.props}, at + dtype.itemsize * element.count


def _ply_ascii_table(element: _PlyElement, rows: list[str]) -> dict | None:
    """The element's columns when every record has the same width (lists of one length): the common case."""
    table = _table(rows)
    if table is None:
        return None
    columns, k = {}, 0
    for name, _, count_kind in element.props:
        if k >= table.shape[1]:
            return None
        if count_kind is None:
            columns[name], k = table[:, k], k + 1
        else:
            n = _uniform_lists(table, k)
            if n is None:
                return None
            columns[name], k = table[:, k + 1:k + 1 + n].astype(np.int64), k + 1 + n
    return columns if k == table.shape[1] else None


def _ply_ascii(element: _PlyElement, lines: list[str], at: int) -> tuple[dict, int]:
    if len(lines) - at < element.count:
        raise ValueError(f"the header announces {element.count} {element.name} records, "
                         f"the file is truncated after {len(lines) - at}")
    rows = lines[at:at + element.count]
    columns = _ply_ascii_table(element, rows)
    if columns is not None:
        return columns, at + element.count
    if all(count is None for _, _, count in element.props):
        width = len(element.props)
        words = [r.split() for r in rows]
        bad = next((r for r, w in zip(rows, words, strict=True) if len(w) != width), None)
        if bad is not None:
            raise ValueError(f"a {element.name} record {bad[:60]!r} is not the header's {width} values")
        try:
            table = np.array(words, dtype=np.float64).reshape(len(rows), width)
        except ValueError as exc:
            raise ValueError(f"a {element.name} record is not {width} numbers") from exc
        return {name: table[:, i] for i, (name, _, _) in enumerate(element.props)}, at + element.count
    columns: dict = {name: [] for name, _, _ in element.props}
    for row in rows:
        words, k = row.split(), 0
        try:
            for name, _, count_kind in element.props:
                if count_kind is None:
                    columns[name].append(float(words[k]))
                    k += 1
                else:
                    n = int(words[k])
                    if n < 0 or k + 1 + n > len(words):
                        raise IndexError
                    columns[name].append([int(float(v)) for v in words[k + 1:k + 1 + n]])
                    k += 1 + n
        except (IndexError, ValueError) as exc:
            raise ValueError(f"a {element.name} record {row[:60]!r} does not match the header") from exc
        if k != len(words):
            raise ValueError(f"a {element.name} record {row[:60]!r} has {len(words) - k} value(s) more than the header")
    return columns, at + element.count


def read_ply(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[V, 3]`` and triangles ``[F, 3]`` (empty for a point cloud) of an ascii or binary PLY."""
    fmt, elements, body = _ply_header(data)
    found: dict[str, dict] = {}
    if fmt == "ascii":
        lines = [line for line in data[body:].decode("ascii", errors="replace").splitlines() if line.strip()]
        at = 0
        for element in elements:
            found[element.name], at = _ply_ascii(element, lines, at)
        if at != len(lines):
            raise ValueError(f"{len(lines) - at} line(s) after the records the header announces "
                             f"({', '.join(f'{e.count} {e.name}' for e in elements)}): the counts are wrong")
    else:
        order, at = ("<" if fmt == "binary_little_endian" else ">"), body
        for element in elements:
            if element.name not in ("vertex", "face") and found.keys() >= {"vertex", "face"}:
                break  # nothing needed after the vertices and faces
            found[element.name], at = _ply_binary(element, data, at, order)
    vertex = found.get("vertex")
    if vertex is None or not {"x", "y", "z"} <= vertex.keys():
        raise ValueError("the PLY file has no vertex element with x, y, z")
    vertices = np.column_stack([np.asarray(vertex[k], dtype=np.float64) for k in "xyz"]).reshape(-1, 3)
    face = found.get("face", {})
    polygons = next((face[k] for k in FACE_LISTS if k in face), [])
    if not isinstance(polygons, np.ndarray):  # per-record lists (ascii, or polygons of mixed sizes)
        polygons = [list(map(int, p)) for p in polygons]
    triangles = fan_triangles(polygons)
    return vertices, _check_ids(triangles, len(vertices))


# ---------------------------------------------------------------- PCD

def lzf_decompress(data: bytes, size: int) -> bytes:
    """LZF (liblzf) decompression, as PCL writes ``binary_compressed`` clouds."""
    try:
        out = _lzf(data)
    except IndexError:
        raise ValueError("corrupt or truncated LZF data") from None
    if len(out) != size:
        raise ValueError(f"LZF data decompress to {len(out)} bytes, the header says {size}")
    return bytes(out)


def _lzf(data: bytes) -> bytearray:
    out, i = bytearray(), 0
    while i < len(data):
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # a literal run of ctrl + 1 bytes
            out += data[i:i + ctrl + 1]
            i += ctrl + 1
            continue
        length = ctrl >> 5
        if length == 7:
            length += data[i]
            i += 1
        start = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        if start < 0:
            raise ValueError("corrupt LZF data (a reference before the start)")
        for k in range(length + 2):  # may overlap the bytes being written
            out.append(out[start + k])
    return out


def read_pcd(data: bytes) -> np.ndarray:
    """The xyz ``[N, 3]`` of a PCD file (``DATA ascii``, ``binary`` or ``binary_compressed``)."""
    fields: dict[str, list[str]] = {}
    at = 0
    while True:
        end = data.find(b"\n", at)
        if end < 0:
            raise ValueError("not a PCD file (no DATA line)")
        words = data[at:end].decode("ascii", errors="replace").split()
        at = end + 1
        if words and not words[0].startswith("#"):
            fields[words[0].upper()] = words[1:]
            if words[0].upper() == "DATA":
                break
    try:
        names = fields["FIELDS"]
        sizes = [int(v) for v in fields["SIZE"]]
        kinds = fields["TYPE"]
        counts = [int(v) for v in fields.get("COUNT", ["1"] * len(names))]
        points = int(fields["POINTS"][0]) if "POINTS" in fields else \
            int(fields["WIDTH"][0]) * int(fields.get("HEIGHT", ["1"])[0])
        mode = fields["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"the PCD header lacks or garbles {exc}") from exc
    names = [f"_pad{i}" if n == "_" else n for i, n in enumerate(names)]  # PCL's padding fields
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"the PCD fields {names} hold no x, y, z")
    try:
        letters = {"F": "f", "I": "i", "U": "u"}
        bases = [np.dtype(f"<{letters[k.upper()]}{s}") for k, s in zip(kinds, sizes, strict=True)]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the PCD TYPE/SIZE lines {kinds} {sizes} name no numpy type") from exc
    dtype = np.dtype([(n, b, (c,) if c > 1 else ()) for n, b, c in zip(names, bases, counts, strict=True)])
    if mode == "ascii":
        lines = [line for line in data[at:].decode("ascii", errors="replace").splitlines() if line.strip()]
        if len(lines) < points:
            raise ValueError(f"the header announces {points} points, the file holds {len(lines)}")
        width = sum(counts)
        table = _table(lines[:points], usecols=tuple(range(width)))
        if table is None:  # record by record, to name the bad point
            rows = [line.split()[:width] for line in lines[:points]]
            short = next((i for i, row in enumerate(rows) if len(row) < width), None)
            if short is not None:
                raise ValueError(f"point {short} has {len(rows[short])} values, the fields take {width}")
            table = np.array(rows, dtype=np.float64).reshape(points, width)
        column = np.cumsum([0] + counts)
        return np.column_stack([table[:, column[names.index(k)]] for k in "xyz"]).astype(np.float32)
    if mode == "binary":
        if len(data) - at < dtype.itemsize * points:
            raise ValueError(f"the header announces {points} points, the file is truncated after "
                             f"{(len(data) - at) // dtype.itemsize}")
        rows = np.frombuffer(data, dtype=dtype, count=points, offset=at)
        return np.column_stack([rows[k] for k in "xyz"]).astype(np.float32)
    if mode == "binary_compressed":
        if len(data) - at < 8:
            raise ValueError("the compressed PCD data is truncated")
        packed, size = struct.unpack("<II", data[at:at + 8])
        if len(data) - at - 8 < packed:
            raise ValueError(f"the compressed PCD data is truncated ({len(data) - at - 8} of {packed} bytes)")
        if size != dtype.itemsize * points:
            raise ValueError(f"the compressed PCD data decompress to {size} bytes, the header's {points} points "
                             f"take {dtype.itemsize * points}")
        raw = lzf_decompress(data[at + 8:at + 8 + packed], size)
        columns, offset = {}, 0  # stored field by field
        for name, base, count in zip(names, bases, counts, strict=True):
            columns[name] = np.frombuffer(raw, base, points * count, offset).reshape(points, count)[:, 0]
            offset += base.itemsize * count * points
        return np.column_stack([columns[k] for k in "xyz"]).astype(np.float32)
    raise ValueError(f"unknown PCD DATA mode {mode!r}")


# ---------------------------------------------------------------- OBJ, STL, OFF

def _obj_table(text: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Vertices and triangles when every ``v`` line has x y z and every face the same number of positive ids."""
    vertices = _table(re.findall(r"^[ \t]*v[ \t]+([^\r\n]*)", text, re.M), usecols=(0, 1, 2))
    if vertices is None:
        return None
    faces = re.findall(r"^[ \t]*f[ \t]+([^\r\n]*)", text, re.M)
    if not faces:
        return vertices, np.zeros((0, 3), dtype=np.int64)
    ids = _table(re.sub(r"/\S*", "", "\n".join(faces)).split("\n"))  # "f 1/1/1 2/2/2 ..." keeps the vertex ids
    if ids is None or ids.min() < 1 or not np.array_equal(ids, np.round(ids)):
        return None  # mixed polygons or ids counted back from the end: read line by line
    return vertices, _check_ids(fan_triangles(ids.astype(np.int64) - 1), len(vertices))


def read_obj(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of a Wavefront OBJ (``v`` and ``f`` lines; ``f 1/2/3`` and negative ids)."""
    text = data.decode("utf-8", errors="replace")
    fast = _obj_table(text)
    if fast is not None:
        return fast
    vertices: list[list[float]] = []
    polygons: list[list[int]] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "v":
                if len(words) < 4:
                    raise ValueError("a vertex line needs x y z")
                vertices.append([float(v) for v in words[1:4]])
            elif words[0] == "f":
                ids = [int(w.split("/")[0]) for w in words[1:]]
                if 0 in ids:
                    raise ValueError("OBJ vertex ids start at 1 (or count back from -1)")
                polygons.append([i - 1 if i > 0 else len(vertices) + i for i in ids])
        except ValueError as exc:
            raise ValueError(f"line {number} {line.strip()[:60]!r} is not a vertex or face ({exc})") from exc
    array = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    return array, _check_ids(fan_triangles(polygons), len(array))


def read_stl(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of an ascii or binary STL (each facet's three corners, not merged)."""
    if len(data) >= 84:
        count = struct.unpack("<I", data[80:84])[0]
        if len(data) == 84 + 50 * count:  # binary (even when the 80-byte header starts with 'solid')
            rows = np.frombuffer(data, dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]),
                                 count=count, offset=84)
            vertices = rows["v"].reshape(-1, 3).astype(np.float64)
            return vertices, np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)
    if not data.lstrip().startswith(b"solid"):
        raise ValueError("neither an ascii STL ('solid' ...) nor a binary one of the size its header implies")
    corners = re.findall(rb"vertex\s+(\S+)\s+(\S+)\s+(\S+)", data)
    if not corners:
        raise ValueError("no facet read: an empty ascii STL, or a binary one (its header may start with 'solid' "
                         "too) whose size does not match its triangle count: truncated")
    if len(corners) % 3:
        raise ValueError(f"{len(corners)} facet corners, not a multiple of 3: the file is truncated")
    vertices = np.asarray(corners, dtype=np.float64).reshape(-1, 3)
    return vertices, np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)


def read_off(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[V, 3]`` and fan-triangulated faces ``[F, 3]`` of an OFF file.

    Reads OFF/COFF/NOFF/CNOFF with comments, counts on the header line or the next, the ``OFF490 518 0``
    header some ModelNet files have, and faces with or without a colour (integer or float) after their ids.
    """
    lines = [line.split("#", 1)[0].strip() for line in data.decode("utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    header = re.match(r"([A-Za-z]*OFF)(.*)", lines[0]) if lines else None
    if header is None:
        raise ValueError("not an OFF file (no OFF header)")
    kind, rest = header.group(1).upper(), header.group(2).split()
    prefix = kind[:-3]
    per_vertex = 3 + (3 if "N" in prefix else 0) + (4 if "C" in prefix else 0)
    at = 1
    if len(rest) < 2 and len(lines) > 1:  # the counts are on the next line
        rest, at = lines[1].split(), 2
    if len(rest) < 2:
        raise ValueError("the OFF header has no vertex and face counts")
    num_vertices, num_faces = int(rest[0]), int(rest[1])
    table = _table(lines[at:at + num_vertices]) if len(lines) - at >= num_vertices else None
    rows = [] if table is not None else [line.split() for line in lines[at:at + num_vertices]]
    widths = {len(r) for r in rows}
    if table is not None and table.shape[1] >= 3:  # a vertex per line, all of one width
        vertices = table
        at += num_vertices
    elif len(rows) == num_vertices and min(widths, default=3) >= 3 and (min(widths) >= per_vertex or len(widths) == 1):
        # a vertex per line (the spec), whatever follows its xyz (colours with or without alpha, extra values)
        vertices = np.asarray([r[:3] for r in rows], dtype=np.float64).reshape(num_vertices, 3)
        at += num_vertices
    else:  # vertices wrapped over several lines
        values: list[str] = []
        while len(values) < num_vertices * per_vertex:
            if at == len(lines):
                raise ValueError(f"the header announces {num_vertices} vertices, the file ends before them")
            values += lines[at].split()
            at += 1
        if len(values) != num_vertices * per_vertex:
            raise ValueError(f"the {num_vertices} vertices do not end where a line does: not {per_vertex} values each")
        vertices = np.asarray(values, dtype=np.float64).reshape(num_vertices, per_vertex)
    if len(lines) - at >= num_faces and (table := _table(lines[at:at + num_faces])) is not None:
        n = _uniform_lists(table, 0)
        if n is not None and np.array_equal(table[:, 1:n + 1], np.round(table[:, 1:n + 1])):
            return vertices[:, :3], _check_ids(fan_triangles(table[:, 1:n + 1].astype(np.int64)), num_vertices)
    polygons = []
    for line in lines[at:at + num_faces]:
        words = line.split()
        n = int(words[0])
        if len(words) < n + 1:
            raise ValueError(f"a face of {n} vertices lists {len(words) - 1} ids")
        polygons.append([int(v) for v in words[1:n + 1]])  # anything after the ids is the face's colour
    if len(lines) - at < num_faces:
        raise ValueError(f"the header announces {num_faces} faces, the file holds {len(lines) - at}")
    return vertices[:, :3], _check_ids(fan_triangles(polygons), num_vertices)
